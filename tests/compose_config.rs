//! docker-compose.yml configures Tally through `TALLY__SECTION__KEY` variables; a misspelt one
//! would be refused by `tally` at start (unknown keys are errors) only once someone deploys.
//! This reads every such variable the compose file sets and loads the configuration with them,
//! as the services do, so the file and the code cannot drift apart. (`scripts/check-deploy`
//! validates the file itself with Debian's docker-compose.)

use tally_common::Config;

/// `(variable, value)` for every `TALLY__` variable set in docker-compose.yml, with compose's
/// `${NAME:?message}` and `${NAME:-default}` replaced by a placeholder.
fn compose_variables() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml")).unwrap();
    let mut variables = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((name, value)) = line.split_once(':') else { continue };
        if !name.starts_with("TALLY__") || name.contains(' ') {
            continue;
        }
        let mut value = value.trim().to_string();
        while let Some(start) = value.find("${") {
            let end = value[start..].find('}').map(|end| start + end + 1).unwrap_or(value.len());
            value.replace_range(start..end, "placeholder");
        }
        variables.push((name.to_string(), value.trim_matches('"').to_string()));
    }
    variables
}

#[test]
fn every_variable_the_compose_file_sets_is_a_configuration_key() {
    let variables = compose_variables();
    let names: Vec<&str> = variables.iter().map(|(name, _)| name.as_str()).collect();
    for expected in ["TALLY__KAFKA__BROKERS", "TALLY__CLICKHOUSE__PASSWORD", "TALLY__POSTGRES__URL", "TALLY__INGEST__LISTEN"] {
        assert!(names.contains(&expected), "{expected} not found in docker-compose.yml: the reader is broken ({names:?})");
    }
    // This test binary has this one test, so setting the environment races with nothing.
    for (name, value) in &variables {
        std::env::set_var(name, value);
    }
    let config = Config::load(None).unwrap_or_else(|error| panic!("docker-compose.yml's TALLY__ variables: {error}"));
    assert_eq!(config.kafka.brokers, "kafka:9092");
    assert_eq!(config.clickhouse.user, "tally");
    // The check can fail: an unknown key is refused, naming it.
    std::env::set_var("TALLY__INGEST__MAX_BODY_BYTEZ", "1");
    let error = Config::load(None).unwrap_err().to_string();
    assert!(error.contains("max_body_bytez"), "{error}");
    std::env::remove_var("TALLY__INGEST__MAX_BODY_BYTEZ");
}

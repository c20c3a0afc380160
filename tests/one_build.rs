//! The README's two commands share one compiled dependency tree: `scripts/up` builds the
//! service (`cargo build --release --bin tally`) and `scripts/test` the tests
//! (`cargo test --workspace --release`). Cargo compiles a crate again for every distinct set
//! of features, and the tests' dependencies (reqwest, proptest, criterion) and tally-loadtest
//! turn on features of crates the service uses too; the root Cargo.toml names those features
//! in the service's own dependencies. This test asks `cargo tree` for the features each build
//! resolves and fails, naming the crates and features, when a new dependency makes them differ
//! again (the cure: add the features named to that list in Cargo.toml).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// `package version` → the features cargo resolves for it in one build.
fn resolved_features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "--prefix", "none", "--format", "{p}|{f}"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(output.status.success(), "cargo tree {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let mut features: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(output.stdout).expect("utf-8").lines() {
        let Some((package, list)) = line.split_once('|') else { continue };
        // A package listed before is marked " (*)" after its features.
        let list = list.trim_end_matches(" (*)");
        // "name v1.2.3" or "name v1.2.3 (/path)" or a repeated "name v1.2.3 (*)".
        let package = package.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let entry = features.entry(package).or_default();
        entry.extend(list.split(',').filter(|feature| !feature.is_empty()).map(str::to_owned));
    }
    features
}

#[test]
fn the_service_build_and_the_test_build_resolve_the_same_features() {
    let service = resolved_features(&["--package", "tally", "--edges", "normal,build"]);
    let tests = resolved_features(&["--workspace", "--edges", "normal,build,dev"]);
    // The listing was read: the service's tree holds librdkafka and tokio with its features.
    assert!(service.keys().any(|package| package.starts_with("rdkafka-sys ")), "no rdkafka-sys in {:?}", service.keys());
    assert!(service.iter().any(|(package, features)| package.starts_with("tokio ") && features.contains("rt-multi-thread")));
    let differing: Vec<String> = service
        .iter()
        .filter_map(|(package, features)| {
            let in_tests = tests.get(package)?;
            (in_tests != features).then(|| format!("{package}: the tests add {:?}", in_tests.difference(features).collect::<Vec<_>>()))
        })
        .collect();
    assert!(
        differing.is_empty(),
        "the test build compiles these crates (and all that depend on them) a second time; add the features to the list in Cargo.toml:\n{}",
        differing.join("\n")
    );
}

//! The startup schema checks (`tally_common::schema_check`, `tally_processor::schema::check`,
//! `tally_query_api::schema::check`) against the real ClickHouse: on a database migrated from
//! migrations/clickhouse every row struct the processor inserts and every column the query API
//! reads fits its table; a struct or table that drifted is reported with the table and the
//! columns; a database without the tables is reported as such. And why the checks exist: the
//! `clickhouse` crate's own row validation works only on a server with
//! `RowBinaryWithNamesAndTypes`, which the stack's ClickHouse 18.16 lacks.
//!
//! Only ClickHouse is needed: each test migrates a database of its own and drops it.

mod support;

use clickhouse::Row;
use tally_common::schema_check::{self, SchemaError};
use tally_common::{migrate, stores, Config};

/// A fresh database (migrated when `migrated`) and a client for it.
async fn database(migrated: bool) -> (Config, clickhouse::Client) {
    let mut config = Config::load(None).expect("configuration");
    config.clickhouse.database = format!("tally_test_columns_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    if migrated {
        migrate::clickhouse(&config, migrate::CLICKHOUSE).await.expect("clickhouse migrations (scripts/stack up)");
    } else {
        let server = stores::clickhouse_server_client(&config.clickhouse);
        server.query(&format!("CREATE DATABASE {}", config.clickhouse.database)).execute().await.expect("create database");
    }
    let client = stores::clickhouse_client(&config.clickhouse);
    (config, client)
}

async fn drop_database(config: &Config) {
    let server = stores::clickhouse_server_client(&config.clickhouse);
    server.query(&format!("DROP DATABASE IF EXISTS {}", config.clickhouse.database)).execute().await.expect("drop database");
}

#[tokio::test]
async fn the_migrated_tables_fit_what_the_services_insert_and_read() {
    let (config, client) = database(true).await;
    let processor = tally_processor::schema::check(&client).await;
    let query_api = tally_query_api::schema::check(&client).await;
    drop_database(&config).await;
    processor.expect("the processor's rows fit the migrated tables");
    query_api.expect("the query API's columns are in the migrated tables");
}

/// A raw row as it might look after someone renamed a field and forgot the migration.
#[derive(clickhouse::Row, serde::Serialize)]
#[allow(dead_code)]
struct DriftedGenerationRow {
    project_id: String,
    event_id: String,
    cost_usd: f64,
}

#[tokio::test]
async fn a_struct_that_drifted_from_its_table_is_named_with_the_columns() {
    let (config, client) = database(true).await;
    let drifted = schema_check::check_columns::<DriftedGenerationRow>(&client, "generations").await;
    drop_database(&config).await;
    let error = drifted.unwrap_err();
    let message = error.to_string();
    let SchemaError::Mismatch { table, mismatch, .. } = &error else { panic!("{message}") };
    assert_eq!(table, "generations");
    assert_eq!(mismatch.not_in_table, ["cost_usd"], "{message}");
    for column in ["trace_id", "cost", "kafka_offset"] {
        assert!(mismatch.not_written.iter().any(|written| written == column), "{message}");
    }
    assert!(!mismatch.not_written.iter().any(|written| written == "project_id") && mismatch.not_insertable.is_empty(), "{message}");
    assert!(
        message.starts_with("clickhouse_columns::DriftedGenerationRow does not match ClickHouse table generations")
            && message.contains("fields without a column in the table: cost_usd;")
            && message.contains("columns without a default that the row does not write: trace_id,"),
        "{message}"
    );
    assert!(!error.is_unreachable());
}

#[tokio::test]
async fn a_column_added_without_a_default_stops_the_processor_and_one_with_a_default_does_not() {
    let (config, client) = database(true).await;
    client.query("ALTER TABLE rollup_compactions ADD COLUMN reason String").execute().await.unwrap();
    let without_default = tally_processor::schema::check(&client).await;
    let query_api = tally_query_api::schema::check(&client).await;
    client.query("ALTER TABLE rollup_compactions MODIFY COLUMN reason String DEFAULT 'none'").execute().await.unwrap();
    let with_default = tally_processor::schema::check(&client).await;
    drop_database(&config).await;
    let message = without_default.unwrap_err().to_string();
    assert!(
        message.contains("does not match ClickHouse table rollup_compactions")
            && message.ends_with("columns without a default that the row does not write: reason"),
        "{message}"
    );
    query_api.expect("a read needs only the columns it names");
    with_default.expect("a column with a default may be left out");
}

#[tokio::test]
async fn a_database_without_the_tables_is_reported_as_not_migrated() {
    let (config, client) = database(false).await;
    let processor = tally_processor::schema::check(&client).await;
    let query_api = tally_query_api::schema::check(&client).await;
    drop_database(&config).await;
    for result in [processor, query_api] {
        let error = result.unwrap_err();
        assert!(matches!(error, SchemaError::NoTable { .. }), "{error}");
        assert!(error.to_string().contains("has `tally migrate` run?"), "{error}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_told_apart_from_a_schema_that_does_not_fit() {
    // A port nothing listens on (the discard port; connecting is refused at once).
    let client = clickhouse::Client::default().with_url("http://127.0.0.1:9").with_validation(false);
    let error = tally_processor::schema::check(&client).await.unwrap_err();
    assert!(error.is_unreachable(), "{error}");
}

/// The checks run at startup: a processor whose rows no longer fit a table, or a query API
/// missing a column it reads, stops with the error (before the processor consumes anything: its
/// Postgres and Kafka are not even reachable here); while ClickHouse is down both start, and
/// answer `/health`.
#[tokio::test]
async fn the_services_refuse_a_table_that_does_not_fit_and_start_while_clickhouse_is_down() {
    let (mut config, client) = database(true).await;
    client.query("ALTER TABLE rollup_compactions ADD COLUMN reason String").execute().await.unwrap();
    client.query("ALTER TABLE cost_compact_daily DROP COLUMN cache_hits").execute().await.unwrap();
    // Nothing listens on these ports: the services must not get as far as the other stores.
    config.kafka.brokers = "127.0.0.1:9".into();
    config.postgres.url = tally_common::config::Secret::new("postgres://postgres@127.0.0.1:9/none");
    let start = |config: Config| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token = tally_common::shutdown::CancellationToken::new();
        let processor = tokio::time::timeout(std::time::Duration::from_secs(30), tally_processor::serve(config.clone(), listener, token.clone())).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let query_api = tokio::time::timeout(std::time::Duration::from_secs(30), tally_query_api::serve(config, listener, token)).await;
        (processor, query_api)
    };
    let (processor, query_api) = start(config.clone()).await;
    drop_database(&config).await;
    let processor = processor.expect("the processor stops at once").unwrap_err().to_string();
    assert!(processor.contains("does not match ClickHouse table rollup_compactions") && processor.contains("reason"), "{processor}");
    let query_api = query_api.expect("the query API stops at once").unwrap_err().to_string();
    assert!(query_api.contains("cost_compact_daily") && query_api.contains("cache_hits"), "{query_api}");

    // ClickHouse down: both start.
    config.clickhouse.url = "http://127.0.0.1:9".into();
    let http = reqwest::Client::new();
    for service in ["processor", "query-api"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let token = tally_common::shutdown::CancellationToken::new();
        let task = match service {
            "processor" => tokio::spawn(tally_processor::serve(config.clone(), listener, token.clone())),
            _ => tokio::spawn(tally_query_api::serve(config.clone(), listener, token.clone())),
        };
        let status = support::eventually(&format!("{service} to answer /health while ClickHouse is down"), std::time::Duration::from_secs(30), || async {
            assert!(!task.is_finished(), "{service} stopped while ClickHouse was down");
            http.get(format!("http://{address}/health")).send().await.ok().map(|response| response.status())
        })
        .await;
        assert_eq!(status, 200, "{service} /health");
        token.cancel();
        task.abort();
    }
}

/// What `stores::clickhouse_client` turns off, and why: with validation on, the crate
/// describes the table with the setting `describe_include_subcolumns` and sends
/// `RowBinaryWithNamesAndTypes`. When this test fails because the insert works, the server has
/// been upgraded: validation can be turned on (and the startup checks kept or dropped).
#[tokio::test]
async fn the_crates_row_validation_works_only_where_the_server_has_the_format() {
    #[derive(clickhouse::Row, serde::Serialize)]
    struct Probe {
        id: u32,
        name: String,
    }
    let (config, client) = database(false).await;
    client.query("CREATE TABLE probe (id UInt32, name String) ENGINE = Memory").execute().await.unwrap();
    let has_format = client.query("SELECT 1").fetch_bytes("RowBinaryWithNamesAndTypes").unwrap().collect().await.is_ok();
    let validated = async {
        let mut insert = client.clone().with_validation(true).insert::<Probe>("probe").await?;
        insert.write(&Probe { id: 1, name: "a".into() }).await?;
        insert.end().await?;
        Ok::<(), clickhouse::error::Error>(())
    }
    .await;
    drop_database(&config).await;
    assert_eq!(Probe::COLUMN_NAMES, ["id", "name"]);
    match (has_format, validated) {
        (true, Ok(())) => {}
        (false, Err(error)) => {
            let message = error.to_string();
            assert!(message.contains("describe_include_subcolumns") || message.contains("RowBinaryWithNamesAndTypes"), "{message}");
        }
        (has_format, validated) => panic!("server has RowBinaryWithNamesAndTypes: {has_format}; validated insert: {validated:?}"),
    }
}

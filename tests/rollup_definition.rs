//! The ClickHouse rollup tables, as the migrations create them, agree with the rollup's
//! definition in `tally_common::rollup`: every table has the definition's dimensions (the
//! compacted tables those it keeps), then its metric and histogram columns, with the same names,
//! order and types. A metric added to the definition without its migration (or the reverse)
//! fails here rather than in a query.

mod support;

use support::TestEnv;
use tally_common::rollup::{self, Dimension, Metric, HISTOGRAM_COLUMNS, METRICS};
use tally_common::stores;

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Column {
    name: String,
    r#type: String,
}

/// `(name, type)` of every column of `table`, in table order (18.16's `system.columns` has no
/// `position`; it lists a table's columns in their order).
async fn columns(client: &clickhouse::Client, database: &str, table: &str) -> Vec<(String, String)> {
    let rows: Vec<Column> = client
        .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
        .bind(database)
        .bind(table)
        .fetch_all()
        .await
        .unwrap_or_else(|error| panic!("columns of {table}: {error}"));
    rows.into_iter().map(|column| (column.name, column.r#type)).collect()
}

fn string(name: &str) -> (String, String) {
    (name.to_string(), "String".to_string())
}

fn typed(name: &str, sql_type: &str) -> (String, String) {
    (name.to_string(), sql_type.to_string())
}

fn metrics() -> Vec<(String, String)> {
    METRICS.iter().chain(&HISTOGRAM_COLUMNS).map(|Metric { column, sql_type }| typed(column, sql_type)).collect()
}

#[tokio::test]
async fn rollup_tables_agree_with_the_definition() {
    let env = TestEnv::new().await;
    let client = stores::clickhouse_client(&env.config.clickhouse);
    let database = env.config.clickhouse.database.clone();

    let mut batches = vec![typed("source_partition", "Int32"), typed("source_batch_start", "Int64"), string("project_id"), typed("hour", "DateTime")];
    batches.extend(Dimension::ALL.map(|dimension| string(dimension.column())));
    batches.push(typed("batch_end", "UInt64"));
    batches.extend(metrics());
    for table in [rollup::BATCH_TABLE, "cost_rollup_batches_probe"] {
        assert_eq!(columns(&client, &database, table).await, batches, "{table}");
    }

    for (table, time) in [(rollup::COMPACT_HOURLY_TABLE, "hour"), (rollup::COMPACT_DAILY_TABLE, "day")] {
        let mut expected = vec![string("project_id"), typed(time, "DateTime")];
        expected.extend(Dimension::compacted_all().map(|dimension| string(dimension.column())));
        expected.push(typed("version", "UInt64"));
        expected.extend(metrics());
        assert_eq!(columns(&client, &database, table).await, expected, "{table}");
    }

    let totals = columns(&client, &database, rollup::COMPACT_TOTALS_TABLE).await;
    let mut expected = vec![string("project_id")];
    expected.extend(totals.iter().skip(1).take(3).cloned()); // granularity, t, version
    expected.extend(metrics());
    assert_eq!(totals, expected, "{}", rollup::COMPACT_TOTALS_TABLE);
    assert_eq!(totals[1..4].iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["granularity", "t", "version"]);

    env.cleanup().await;
}

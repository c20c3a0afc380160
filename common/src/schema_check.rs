//! A startup check that the row structs a service writes to ClickHouse, and the columns it
//! reads, are the columns of the tables.
//!
//! Why: rows travel as `RowBinary`, values without names or types, because the `clickhouse`
//! crate's own row validation (`RowBinaryWithNamesAndTypes`) needs a newer server than the
//! development stack's 18.16 (see [`crate::stores::clickhouse_client`]). Without it, drift
//! between a struct and its table goes unnoticed or surfaces late: a field the table lacks is
//! refused only by the first insert ("No such column"), deep in a batch's retries, and a column
//! the struct does not write is silently filled with its default on every row. Comparing the
//! struct's field names with `system.columns` once at startup makes a service with a stale
//! schema (`tally migrate` not run, a struct changed without its migration) stop with an error
//! that names the table and the columns.
//!
//! What it does not check:
//! - column order: inserts name their columns (`INSERT INTO t(a, b, ...)`), so order does not
//!   matter (`cost_rollup_batches` is ordered differently from its row struct) and would only
//!   produce false alarms;
//! - types: the crate's `Row` exposes the field names only (`Row::COLUMN_NAMES`), not their
//!   serde types; a changed type comes with a migration and is covered by the tests that read
//!   rows back.
//!
//! The queries run on 18.16 and on current releases (`system.columns` with `default_kind`).

use clickhouse::Row;

/// One column of a table, as `system.columns` describes it.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct TableColumn {
    pub name: String,
    /// The ClickHouse type, e.g. `Nullable(Decimal(38, 12))`.
    pub column_type: String,
    /// `""` (none), `DEFAULT`, `MATERIALIZED` or `ALIAS` (current releases also `EPHEMERAL`).
    pub default_kind: String,
}

impl TableColumn {
    /// Whether an insert may name the column (ClickHouse refuses MATERIALIZED and ALIAS ones).
    fn insertable(&self) -> bool {
        !matches!(self.default_kind.as_str(), "MATERIALIZED" | "ALIAS")
    }

    /// Whether an insert that leaves the column out stores something meant rather than the
    /// type's zero value.
    fn has_default(&self) -> bool {
        !self.default_kind.is_empty()
    }
}

/// How a row struct differs from its table. Each list is empty when nothing of its kind is wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnMismatch {
    /// Fields of the struct that the table has no column for (the insert would be refused).
    pub not_in_table: Vec<String>,
    /// Columns without a default that the struct does not write (every row would store the
    /// type's zero value there).
    pub not_written: Vec<String>,
    /// Fields naming MATERIALIZED or ALIAS columns, which an insert may not name.
    pub not_insertable: Vec<String>,
}

impl ColumnMismatch {
    pub fn is_empty(&self) -> bool {
        self.not_in_table.is_empty() && self.not_written.is_empty() && self.not_insertable.is_empty()
    }
}

impl std::fmt::Display for ColumnMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            ("fields without a column in the table", &self.not_in_table),
            ("columns without a default that the row does not write", &self.not_written),
            ("fields naming MATERIALIZED or ALIAS columns", &self.not_insertable),
        ];
        let described: Vec<String> =
            parts.iter().filter(|(_, names)| !names.is_empty()).map(|(what, names)| format!("{what}: {}", names.join(", "))).collect();
        f.write_str(&described.join("; "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// ClickHouse did not answer the look-up: says nothing about the schema.
    #[error("clickhouse: reading the columns of table {table}: {source}")]
    Query {
        table: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("ClickHouse table {table} does not exist in the configured database (has `tally migrate` run?)")]
    NoTable { table: String },
    #[error("{row} does not match ClickHouse table {table} (run `tally migrate`, or fix the struct and its migration): {mismatch}")]
    Mismatch { table: String, row: String, mismatch: ColumnMismatch },
}

impl SchemaError {
    /// True when ClickHouse could not be asked (down, unreachable): a service that starts while
    /// its stores are down may go on and report it in `/ready`; the other errors are a schema
    /// that does not fit and should stop it.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SchemaError::Query { .. })
    }
}

/// What a service does with its startup check: a schema that does not fit stops it (the error
/// names the table, the struct and the columns); a ClickHouse that does not answer is logged
/// and the service starts, since every service must start while a store is down (its `/ready`
/// names the store, and the first write or read that reaches ClickHouse fails loudly if the
/// schema is wrong after all).
pub fn at_startup(service: &str, result: Result<(), SchemaError>) -> Result<(), SchemaError> {
    match result {
        Err(error) if error.is_unreachable() => {
            tracing::warn!(service, %error, "ClickHouse schema not checked: ClickHouse does not answer; starting anyway");
            Ok(())
        }
        Err(error) => Err(error),
        Ok(()) => {
            tracing::info!(service, "ClickHouse tables fit the rows this service writes and reads");
            Ok(())
        }
    }
}

/// The columns of `table` in the client's database, in table order; empty if there is no such
/// table.
pub async fn table_columns(client: &clickhouse::Client, table: &str) -> Result<Vec<TableColumn>, SchemaError> {
    client
        .query(
            "SELECT name, type AS column_type, default_kind FROM system.columns \
             WHERE database = currentDatabase() AND table = ?",
        )
        .bind(table)
        .fetch_all::<TableColumn>()
        .await
        .map_err(|source| SchemaError::Query { table: table.to_string(), source })
}

/// Checks that rows of `R` can be inserted into `table` as they are meant: every field is an
/// insertable column, and every column without a default is a field.
pub async fn check_columns<R: Row>(client: &clickhouse::Client, table: &str) -> Result<(), SchemaError> {
    let columns = table_columns(client, table).await?;
    compare_insert(table, std::any::type_name::<R>(), R::COLUMN_NAMES, &columns)
}

/// Checks that `table` has every column in `names` (columns a service reads by name).
pub async fn check_columns_exist(client: &clickhouse::Client, table: &str, reader: &str, names: &[&str]) -> Result<(), SchemaError> {
    let columns = table_columns(client, table).await?;
    compare_read(table, reader, names, &columns)
}

/// [`check_columns`] on columns already looked up.
pub fn compare_insert(table: &str, row: &str, fields: &[&str], columns: &[TableColumn]) -> Result<(), SchemaError> {
    if columns.is_empty() {
        return Err(SchemaError::NoTable { table: table.to_string() });
    }
    let mut mismatch = ColumnMismatch::default();
    for &field in fields {
        match columns.iter().find(|column| column.name == field) {
            None => mismatch.not_in_table.push(field.to_string()),
            Some(column) if !column.insertable() => mismatch.not_insertable.push(field.to_string()),
            Some(_) => {}
        }
    }
    for column in columns {
        if !column.has_default() && !fields.contains(&column.name.as_str()) {
            mismatch.not_written.push(column.name.clone());
        }
    }
    if mismatch.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Mismatch { table: table.to_string(), row: row.to_string(), mismatch })
    }
}

/// [`check_columns_exist`] on columns already looked up.
pub fn compare_read(table: &str, reader: &str, names: &[&str], columns: &[TableColumn]) -> Result<(), SchemaError> {
    if columns.is_empty() {
        return Err(SchemaError::NoTable { table: table.to_string() });
    }
    let mut not_in_table = Vec::new();
    for &name in names {
        if !columns.iter().any(|column| column.name == name) {
            not_in_table.push(name.to_string());
        }
    }
    if not_in_table.is_empty() {
        Ok(())
    } else {
        let mismatch = ColumnMismatch { not_in_table, ..ColumnMismatch::default() };
        Err(SchemaError::Mismatch { table: table.to_string(), row: reader.to_string(), mismatch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, default_kind: &str) -> TableColumn {
        TableColumn { name: name.into(), column_type: "UInt64".into(), default_kind: default_kind.into() }
    }

    fn table() -> Vec<TableColumn> {
        vec![column("id", ""), column("count", ""), column("inserted_at", "DEFAULT"), column("id_hash", "MATERIALIZED")]
    }

    #[test]
    fn the_same_columns_in_another_order_fit() {
        assert!(compare_insert("t", "Row", &["count", "id"], &table()).is_ok());
        assert!(compare_insert("t", "Row", &["id", "count", "inserted_at"], &table()).is_ok());
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let error = compare_insert("t", "my::Row", &["id", "cuont", "id_hash"], &table()).unwrap_err();
        let SchemaError::Mismatch { mismatch, .. } = &error else { panic!("{error}") };
        assert_eq!(mismatch.not_in_table, ["cuont"]);
        assert_eq!(mismatch.not_written, ["count"]);
        assert_eq!(mismatch.not_insertable, ["id_hash"]);
        assert_eq!(
            error.to_string(),
            "my::Row does not match ClickHouse table t (run `tally migrate`, or fix the struct and its migration): \
             fields without a column in the table: cuont; columns without a default that the row does not write: count; \
             fields naming MATERIALIZED or ALIAS columns: id_hash"
        );
        assert!(!error.is_unreachable());
    }

    #[test]
    fn a_missing_table_is_its_own_error() {
        let error = compare_insert("gone", "Row", &["id"], &[]).unwrap_err();
        assert!(matches!(error, SchemaError::NoTable { .. }), "{error}");
        assert!(error.to_string().contains("gone"), "{error}");
    }

    #[test]
    fn reads_need_only_the_columns_they_name() {
        assert!(compare_read("t", "reader", &["id", "id_hash"], &table()).is_ok());
        let error = compare_read("t", "reader", &["id", "total"], &table()).unwrap_err().to_string();
        assert!(error.contains("table t") && error.contains("fields without a column in the table: total"), "{error}");
    }
}

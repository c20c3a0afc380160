//! Versioned schema migrations for Postgres and ClickHouse, plus the Kafka topics.
//!
//! Files live in `migrations/postgres/` and `migrations/clickhouse/` as `NNNN_name.sql` and are
//! compiled into the binary (see [`POSTGRES`] and [`CLICKHOUSE`]), so an installed `tally
//! migrate` needs no source tree. Each store records applied versions with a checksum in
//! `tally_schema_migrations`; re-running is a no-op, and an applied file that was edited
//! afterwards is an error rather than a silent divergence.
//!
//! A failure names the file, the statement's number and first line, and the store's message,
//! and leaves no "dirty" mark behind: on Postgres each file runs in one transaction, which rolls
//! back whole; ClickHouse has no transactions, so its files must consist of idempotent
//! statements (`IF NOT EXISTS`), and the version is recorded only after every statement
//! succeeded, so the next run simply repeats the file. An `ALTER TABLE ... ADD COLUMN` of one
//! column counts as done when the column exists (18.16 has no `ADD COLUMN IF NOT EXISTS`).
//!
//! Statements are separated by a `;` at the end of a line; lines starting with `--` are
//! comments. ClickHouse DDL must run on 18.16 (the server of the local stack) and on current
//! releases; see docs/stack.md for what 18.16 lacks.

use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection};

use crate::config::Config;
use crate::stores;

/// A migration file compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    pub file: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($dir:literal, $file:literal) => {
        MigrationFile { file: $file, sql: include_str!(concat!("../../migrations/", $dir, "/", $file)) }
    };
}

/// Postgres migrations, in order. Add new files here.
pub const POSTGRES: &[MigrationFile] = &[
    migration!("postgres", "0001_init.sql"),
    migration!("postgres", "0002_event_keys.sql"),
    migration!("postgres", "0003_key_scopes.sql"),
    migration!("postgres", "0004_subject_limits.sql"),
    migration!("postgres", "0005_grafana_reader.sql"),
    migration!("postgres", "0006_replays.sql"),
];

/// ClickHouse migrations, in order. `{db}` is replaced by the configured database name.
pub const CLICKHOUSE: &[MigrationFile] = &[
    migration!("clickhouse", "0001_init.sql"),
    migration!("clickhouse", "0002_rollup_compaction.sql"),
    migration!("clickhouse", "0003_probe_tables.sql"),
    migration!("clickhouse", "0004_cache_stats.sql"),
    migration!("clickhouse", "0005_rate_windows.sql"),
    migration!("clickhouse", "0006_subject_limits.sql"),
    migration!("clickhouse", "0007_generation_api_key.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration file name {0:?} must look like NNNN_name.sql")]
    BadFileName(String),
    #[error("{store} migration {file} was changed after it was applied (recorded checksum {recorded}, file has {current}); add a new migration instead")]
    Changed { store: &'static str, file: String, recorded: String, current: String },
    #[error("{store} migration {file}, statement {index} (line {line}: `{first_line}`) failed: {reason}. Nothing of this file was recorded; fix it and run `tally migrate` again")]
    Statement { store: &'static str, file: String, index: usize, line: usize, first_line: String, reason: String },
    #[error("{store}: {reason}")]
    Store { store: &'static str, reason: String },
    #[error("invalid ClickHouse database name {0:?}: use letters, digits and _")]
    BadDatabaseName(String),
}

/// What a run did, for the command's output.
#[derive(Debug, Default)]
pub struct MigrateReport {
    pub postgres_applied: Vec<String>,
    pub clickhouse_applied: Vec<String>,
    pub topics_created: Vec<String>,
}

/// A statement of a migration file with the line it starts on.
#[derive(Debug, PartialEq)]
pub struct Statement {
    pub line: usize,
    pub sql: String,
}

/// Splits a file into statements at lines ending in `;`, dropping `--` comment lines.
pub fn split_statements(sql: &str) -> Vec<Statement> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut start_line = 0;
    for (number, line) in sql.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        if current.is_empty() {
            start_line = number + 1;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_string();
            statements.push(Statement { line: start_line, sql: statement });
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        statements.push(Statement { line: start_line, sql: current.trim().to_string() });
    }
    statements
}

fn version_of(file: &str) -> Result<i64, MigrateError> {
    file.split('_')
        .next()
        .and_then(|prefix| prefix.parse::<i64>().ok())
        .filter(|_| file.ends_with(".sql"))
        .ok_or_else(|| MigrateError::BadFileName(file.to_string()))
}

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

fn first_line(sql: &str) -> String {
    let line = sql.lines().next().unwrap_or_default();
    line.chars().take(80).collect()
}

/// Applies every pending migration to Postgres, ClickHouse, and creates the Kafka topics.
pub async fn run_all(config: &Config) -> Result<MigrateReport, MigrateError> {
    let mut report = MigrateReport {
        postgres_applied: postgres(config, POSTGRES).await?,
        clickhouse_applied: clickhouse(config, CLICKHOUSE).await?,
        topics_created: Vec::new(),
    };
    let kafka = &config.kafka;
    for (topic, partitions) in [(&kafka.topic, kafka.partitions), (&kafka.dead_letter_topic, 1)] {
        let created = stores::ensure_topic(kafka, topic, partitions)
            .await
            .map_err(|error| MigrateError::Store { store: "kafka", reason: error.to_string() })?;
        if created {
            report.topics_created.push(topic.clone());
        }
    }
    Ok(report)
}

/// Applies pending Postgres migrations; returns the files applied.
pub async fn postgres(config: &Config, files: &[MigrationFile]) -> Result<Vec<String>, MigrateError> {
    let store_error = |error: sqlx::Error| MigrateError::Store { store: "postgres", reason: error.to_string() };
    let mut connection = PgConnection::connect(config.postgres.url.expose()).await.map_err(store_error)?;
    // Serialises concurrent `tally migrate` runs against the same database.
    connection.execute("SELECT pg_advisory_lock(7351001)").await.map_err(store_error)?;
    let result = postgres_locked(&mut connection, files).await;
    let _ = connection.execute("SELECT pg_advisory_unlock(7351001)").await;
    result
}

async fn postgres_locked(connection: &mut PgConnection, files: &[MigrationFile]) -> Result<Vec<String>, MigrateError> {
    let store_error = |error: sqlx::Error| MigrateError::Store { store: "postgres", reason: error.to_string() };
    connection
        .execute(
            "CREATE TABLE IF NOT EXISTS tally_schema_migrations (
                version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(store_error)?;
    let mut applied = Vec::new();
    for file in files {
        let version = version_of(file.file)?;
        let current = checksum(file.sql);
        let recorded: Option<String> = sqlx::query_scalar("SELECT checksum FROM tally_schema_migrations WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *connection)
            .await
            .map_err(store_error)?;
        match recorded {
            Some(recorded) if recorded == current => continue,
            Some(recorded) => {
                return Err(MigrateError::Changed { store: "postgres", file: file.file.into(), recorded, current });
            }
            None => {}
        }
        let mut transaction = connection.begin().await.map_err(store_error)?;
        for (index, statement) in split_statements(file.sql).iter().enumerate() {
            if let Err(error) = transaction.execute(statement.sql.as_str()).await {
                return Err(MigrateError::Statement {
                    store: "postgres",
                    file: file.file.into(),
                    index: index + 1,
                    line: statement.line,
                    first_line: first_line(&statement.sql),
                    reason: error.to_string(),
                });
            }
        }
        sqlx::query("INSERT INTO tally_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(file.file)
            .bind(&current)
            .execute(&mut *transaction)
            .await
            .map_err(store_error)?;
        transaction.commit().await.map_err(store_error)?;
        tracing::info!(file = file.file, "postgres migration applied");
        applied.push(file.file.to_string());
    }
    Ok(applied)
}

/// Checks that a ClickHouse database name is a plain identifier (it is spliced into DDL).
pub fn valid_database_name(name: &str) -> Result<(), MigrateError> {
    if !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(MigrateError::BadDatabaseName(name.to_string()))
    }
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct AppliedRow {
    version: u32,
    checksum: String,
}

/// Whether a failed ClickHouse statement is an `ADD COLUMN` of one column that is already there:
/// a file that added it and stopped before it was recorded. 18.16 has no `ADD COLUMN IF NOT
/// EXISTS`, so this stands in for it and keeps such files idempotent like the others. With
/// several columns in one statement the others may be missing, so that is not taken as done.
fn column_was_added(sql: &str, error: &str) -> bool {
    let statement = sql.to_ascii_uppercase();
    statement.trim_start().starts_with("ALTER TABLE")
        && statement.matches(" ADD COLUMN ").count() == 1
        && error.contains("column with this name already exists")
}

/// Applies pending ClickHouse migrations; returns the files applied.
pub async fn clickhouse(config: &Config, files: &[MigrationFile]) -> Result<Vec<String>, MigrateError> {
    let database = &config.clickhouse.database;
    valid_database_name(database)?;
    let store_error = |error: clickhouse::error::Error| MigrateError::Store { store: "clickhouse", reason: error.to_string() };
    let server = stores::clickhouse_server_client(&config.clickhouse);
    server.query(&format!("CREATE DATABASE IF NOT EXISTS {database}")).execute().await.map_err(store_error)?;
    server
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {database}.tally_schema_migrations (
                version UInt32, name String, checksum String, applied_at DateTime DEFAULT now()
            ) ENGINE = MergeTree ORDER BY version"
        ))
        .execute()
        .await
        .map_err(store_error)?;
    let recorded: Vec<AppliedRow> = server
        .query(&format!("SELECT version, checksum FROM {database}.tally_schema_migrations"))
        .fetch_all()
        .await
        .map_err(store_error)?;
    let mut applied = Vec::new();
    for file in files {
        let version = version_of(file.file)?;
        let sql = file.sql.replace("{db}", database);
        let current = checksum(file.sql);
        if let Some(row) = recorded.iter().find(|row| i64::from(row.version) == version) {
            if row.checksum == current {
                continue;
            }
            return Err(MigrateError::Changed {
                store: "clickhouse",
                file: file.file.into(),
                recorded: row.checksum.clone(),
                current,
            });
        }
        for (index, statement) in split_statements(&sql).iter().enumerate() {
            if let Err(error) = server.query(&statement.sql).execute().await {
                if column_was_added(&statement.sql, &error.to_string()) {
                    continue;
                }
                return Err(MigrateError::Statement {
                    store: "clickhouse",
                    file: file.file.into(),
                    index: index + 1,
                    line: statement.line,
                    first_line: first_line(&statement.sql),
                    reason: error.to_string(),
                });
            }
        }
        server
            .query(&format!("INSERT INTO {database}.tally_schema_migrations (version, name, checksum) VALUES (?, ?, ?)"))
            .bind(version as u32)
            .bind(file.file)
            .bind(&current)
            .execute()
            .await
            .map_err(store_error)?;
        tracing::info!(file = file.file, "clickhouse migration applied");
        applied.push(file.file.to_string());
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_column_counts_as_added_only_for_a_one_column_add() {
        let exists = "Code: 44, e.displayText() = DB::Exception: Cannot add column b: column with this name already exists";
        assert!(column_was_added("ALTER TABLE db.generations ADD COLUMN api_key_id Nullable(String)", exists));
        assert!(column_was_added("alter table db.t add column b Decimal(38, 12)", "Cannot add column `b`: column with this name already exists. (ILLEGAL_COLUMN)"));
        assert!(!column_was_added("ALTER TABLE db.t ADD COLUMN b String, ADD COLUMN c String", exists), "the second column may be missing");
        assert!(!column_was_added("ALTER TABLE db.t ADD COLUMN b String", "Code: 60. Table db.t doesn't exist"));
        assert!(!column_was_added("CREATE TABLE db.t (b String) ENGINE = Log", exists));
    }

    #[test]
    fn splits_at_line_final_semicolons_and_skips_comments() {
        let sql = "-- header\nCREATE TABLE a (\n  x int -- why\n);\n\nCREATE INDEX b ON a (x);\n";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].line, 2);
        assert!(statements[0].sql.starts_with("CREATE TABLE a"));
        assert_eq!(statements[1], Statement { line: 6, sql: "CREATE INDEX b ON a (x)".into() });
    }

    #[test]
    fn file_names_carry_versions() {
        assert_eq!(version_of("0012_prices.sql").unwrap(), 12);
        assert!(version_of("prices.sql").is_err());
    }

    #[test]
    fn embedded_files_are_in_order() {
        for files in [POSTGRES, CLICKHOUSE] {
            let versions: Vec<i64> = files.iter().map(|f| version_of(f.file).unwrap()).collect();
            assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        }
    }
}

//! Errors of the write protocol, and which of them are worth retrying.
//!
//! A batch write that fails is retried with backoff while consumption pauses (see
//! [`crate::consumer`]). That is right while a store is down or slow, and wrong when the store
//! refused *this data*: the same rows fail the same way on every retry, and every partition of
//! the lane waits behind them forever. So every error is one of two kinds:
//!
//! - [`ErrorKind::Transient`]: the store is unreachable, timed out, overloaded, out of disk,
//!   shutting down, a deadlock or serialisation failure, or the schema is not what the code
//!   expects (a missing migration: not the event's fault, so no event is dead-lettered for it).
//!   Retried as before.
//! - [`ErrorKind::Refused`]: the store refused the values of the rows. Postgres SQLSTATE class
//!   22 (data exception: a `bigint` total out of range, a string too long, ...), 54000 (a
//!   program limit: a `jsonb` too large), 23502/23514 (a NOT NULL or CHECK constraint);
//!   ClickHouse codes for values out of range or unparseable (69, 70, 72, 131, 321, 6, 27, 117)
//!   and 252 when it is "too many partitions for a single INSERT block" (252 is also "too many
//!   parts", which is backpressure and transient); and serialisation errors of the client
//!   (a row the crate cannot encode). The sink then finds the events that cause it (see
//!   [`super::isolate`]), dead-letters them with the store's message and writes the rest.
//!
//! Anything not recognised is transient: retrying too long is safe, dead-lettering a good event
//! is not.

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("dead-letter topic: {0}")]
    DeadLetter(String),
}

/// Whether retrying the same batch can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The store is unavailable or busy: retry the same batch.
    Transient,
    /// The store refused the batch's values: retrying the same rows fails the same way.
    Refused,
}

impl SinkError {
    /// Which store failed, for metrics and `/ready`.
    pub fn store(&self) -> &'static str {
        match self {
            SinkError::Postgres(_) => "postgres",
            SinkError::ClickHouse(_) => "clickhouse",
            SinkError::DeadLetter(_) => "kafka",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            SinkError::Postgres(error) => postgres_kind(error),
            SinkError::ClickHouse(error) => clickhouse_kind(error),
            SinkError::DeadLetter(_) => ErrorKind::Transient,
        }
    }
}

fn postgres_kind(error: &sqlx::Error) -> ErrorKind {
    let sqlx::Error::Database(database) = error else { return ErrorKind::Transient };
    postgres_code_kind(database.code().as_deref().unwrap_or_default())
}

/// The kind of a Postgres SQLSTATE.
pub fn postgres_code_kind(sqlstate: &str) -> ErrorKind {
    match sqlstate {
        // 22: data exception (numeric value out of range, string data right truncation, ...).
        code if code.starts_with("22") => ErrorKind::Refused,
        // Program limit exceeded (jsonb or array too large), NOT NULL and CHECK violations.
        "54000" | "23502" | "23514" => ErrorKind::Refused,
        _ => ErrorKind::Transient,
    }
}

fn clickhouse_kind(error: &clickhouse::error::Error) -> ErrorKind {
    use clickhouse::error::Error;
    match error {
        // Raised by serde while encoding a row: the row's values, not the server.
        Error::Custom(_) | Error::SequenceMustHaveLength | Error::VariantDiscriminatorIsOutOfBound(_) => ErrorKind::Refused,
        Error::BadResponse(message) => clickhouse_message_kind(message),
        _ => ErrorKind::Transient,
    }
}

/// The kind of a ClickHouse server error, from its `Code: N` and message.
pub fn clickhouse_message_kind(message: &str) -> ErrorKind {
    let Some(code) = clickhouse_code(message) else { return ErrorKind::Transient };
    match code {
        // CANNOT_PARSE_TEXT, CANNOT_PARSE_INPUT_ASSERTION_FAILED, ARGUMENT_OUT_OF_BOUND,
        // CANNOT_CONVERT_TYPE, CANNOT_PARSE_NUMBER, INCORRECT_DATA, TOO_LARGE_STRING_SIZE,
        // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE.
        6 | 27 | 69 | 70 | 72 | 117 | 131 | 321 => ErrorKind::Refused,
        // TOO_MANY_PARTS: refused data only when it is the partitions-per-insert limit.
        252 if message.to_ascii_lowercase().contains("partitions for single insert") => ErrorKind::Refused,
        _ => ErrorKind::Transient,
    }
}

fn clickhouse_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_data_errors_are_refusals_and_the_rest_transient() {
        assert_eq!(postgres_code_kind("22003"), ErrorKind::Refused, "numeric_value_out_of_range");
        assert_eq!(postgres_code_kind("54000"), ErrorKind::Refused, "program_limit_exceeded (jsonb too large)");
        assert_eq!(postgres_code_kind("40P01"), ErrorKind::Transient, "deadlock");
        assert_eq!(postgres_code_kind("53100"), ErrorKind::Transient, "disk full");
        assert_eq!(postgres_code_kind("42P01"), ErrorKind::Transient, "undefined table: a migration, not the data");
        assert_eq!(postgres_code_kind(""), ErrorKind::Transient);
    }

    #[test]
    fn clickhouse_codes_tell_refused_data_from_backpressure() {
        let partitions = "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)";
        assert_eq!(clickhouse_message_kind(partitions), ErrorKind::Refused);
        let parts = "Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts.";
        assert_eq!(clickhouse_message_kind(parts), ErrorKind::Transient);
        assert_eq!(clickhouse_message_kind("Code: 321. DB::Exception: Value out of range"), ErrorKind::Refused);
        assert_eq!(clickhouse_message_kind("Code: 241. DB::Exception: Memory limit exceeded"), ErrorKind::Transient);
        assert_eq!(clickhouse_message_kind("Code: 16. DB::Exception: No such column"), ErrorKind::Transient);
        assert_eq!(clickhouse_message_kind("connection reset"), ErrorKind::Transient);
    }
}

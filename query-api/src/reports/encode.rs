//! Writing report rows as CSV (through the `csv` crate, which quotes what needs quoting), JSON
//! or NDJSON, one row at a time into a byte buffer that the caller takes in chunks, and the
//! totals, summed exactly (tokens as `u128`, cost as `Decimal`) as the rows go by.
//!
//! Layout of each format:
//! - CSV: a header, one line per group, then one totals line. The first column, `row`, says
//!   which (`group` or `total`), so that no key value can be mistaken for the totals.
//! - JSON: `{"from", "to", "tz", "group_by", "currency", "rows": [...], "totals": {...}}`.
//! - NDJSON: one object per group, then `{"totals": {...}}` as the last line.
//!
//! Costs are exact decimal strings in every format; counts are numbers.

use std::str::FromStr;

use rust_decimal::Decimal;
use tally_common::api_error::ApiError;
use tally_common::rollup::METRICS;

use super::query::{Key, ReportFormat};
use super::sql::{count_columns, ReportRow};

/// What the report's header says about it (JSON only; CSV has its header line).
pub struct Heading {
    pub from: String,
    pub to: String,
    pub tz: String,
}

pub struct Encoder {
    format: ReportFormat,
    keys: Vec<Key>,
    csv: csv::Writer<Vec<u8>>,
    /// Bytes written and not yet taken (JSON and NDJSON; CSV's are in its writer).
    buffer: Vec<u8>,
    rows: u64,
    totals: Totals,
}

#[derive(Default)]
struct Totals {
    counts: Vec<u128>,
    cost: Decimal,
}

impl Encoder {
    /// An encoder whose header (CSV line or JSON opening) is already written.
    pub fn new(format: ReportFormat, keys: Vec<Key>, heading: &Heading) -> Result<Self, ApiError> {
        let mut encoder = Encoder {
            format,
            keys,
            csv: csv::Writer::from_writer(Vec::new()),
            buffer: Vec::new(),
            rows: 0,
            totals: Totals { counts: vec![0; count_columns().count()], cost: Decimal::ZERO },
        };
        match format {
            ReportFormat::Csv => {
                let mut header = vec!["row"];
                header.extend(encoder.keys.iter().map(|key| key.name()));
                header.extend(METRICS.iter().map(|metric| metric.column));
                encoder.csv.write_record(&header).map_err(csv_failed)?;
            }
            ReportFormat::Json => {
                let group_by: Vec<&str> = encoder.keys.iter().map(|key| key.name()).collect();
                let opening = serde_json::json!({"from": heading.from, "to": heading.to, "tz": heading.tz, "group_by": group_by, "currency": "USD"});
                let opening = opening.to_string();
                // The object without its closing brace, then the rows' array.
                encoder.buffer.extend_from_slice(&opening.as_bytes()[..opening.len() - 1]);
                encoder.buffer.extend_from_slice(b",\"rows\":[");
            }
            ReportFormat::Ndjson => {}
        }
        Ok(encoder)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes one group and adds it to the totals.
    pub fn row(&mut self, row: &ReportRow) -> Result<(), ApiError> {
        let cost = Decimal::from_str(&row.cost).map_err(|error| ApiError::internal("parsing a report cost", &error))?;
        if row.counts.len() != self.totals.counts.len() {
            return Err(ApiError::internal("reading a report row", &format!("{} counts, expected {}", row.counts.len(), self.totals.counts.len())));
        }
        for (total, count) in self.totals.counts.iter_mut().zip(&row.counts) {
            *total += u128::from(*count);
        }
        self.totals.cost += cost;
        let counts: Vec<u128> = row.counts.iter().map(|count| u128::from(*count)).collect();
        let keys: Vec<&str> = self.keys.iter().map(|key| row.key(*key)).collect();
        match self.format {
            ReportFormat::Csv => self.csv_line("group", &keys, &counts, cost)?,
            ReportFormat::Json => {
                if self.rows > 0 {
                    self.buffer.push(b',');
                }
                self.json_object(Some(&keys), &counts, cost);
            }
            ReportFormat::Ndjson => {
                self.json_object(Some(&keys), &counts, cost);
                self.buffer.push(b'\n');
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Writes the totals and the end of the report.
    pub fn finish(&mut self) -> Result<(), ApiError> {
        let counts = self.totals.counts.clone();
        let cost = self.totals.cost.normalize();
        match self.format {
            ReportFormat::Csv => {
                let empty = vec![""; self.keys.len()];
                self.csv_line("total", &empty, &counts, cost)?;
            }
            ReportFormat::Json => {
                self.buffer.extend_from_slice(b"],\"totals\":");
                self.json_object(None, &counts, cost);
                self.buffer.extend_from_slice(b"}\n");
            }
            ReportFormat::Ndjson => {
                self.buffer.extend_from_slice(b"{\"totals\":");
                self.json_object(None, &counts, cost);
                self.buffer.extend_from_slice(b"}\n");
            }
        }
        Ok(())
    }

    /// How many bytes are waiting to be taken, about (CSV's writer holds up to 8 KiB more).
    pub fn pending(&self) -> usize {
        self.buffer.len() + self.csv.get_ref().len()
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Result<Vec<u8>, ApiError> {
        // The writer's buffer is its own: a new writer per chunk hands over the bytes.
        let writer = std::mem::replace(&mut self.csv, csv::Writer::from_writer(Vec::new()));
        let mut chunk = writer.into_inner().map_err(|error| ApiError::internal("writing the report", &error.error().to_string()))?;
        chunk.append(&mut self.buffer);
        Ok(chunk)
    }

    fn csv_line(&mut self, kind: &str, keys: &[&str], counts: &[u128], cost: Decimal) -> Result<(), ApiError> {
        let mut record: Vec<String> = vec![kind.to_string()];
        record.extend(keys.iter().map(|key| key.to_string()));
        let mut counts = counts.iter();
        for metric in &METRICS {
            record.push(if metric.column == "cost" { cost.normalize().to_string() } else { counts.next().copied().unwrap_or(0).to_string() });
        }
        self.csv.write_record(&record).map_err(csv_failed)
    }

    /// `{"key": "value", ..., "requests": 1, ..., "cost": "0.5"}`; no keys for the totals.
    fn json_object(&mut self, keys: Option<&[&str]>, counts: &[u128], cost: Decimal) {
        let out = &mut self.buffer;
        out.push(b'{');
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, name: &str| {
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_string(out, name);
            out.push(b':');
        };
        for (key, value) in self.keys.iter().zip(keys.unwrap_or_default()) {
            field(out, key.name());
            write_json_string(out, value);
        }
        let mut counts = counts.iter();
        for metric in &METRICS {
            field(out, metric.column);
            if metric.column == "cost" {
                write_json_string(out, &cost.normalize().to_string());
            } else {
                out.extend_from_slice(counts.next().copied().unwrap_or(0).to_string().as_bytes());
            }
        }
        out.push(b'}');
    }
}

fn write_json_string(out: &mut Vec<u8>, value: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn csv_failed(error: csv::Error) -> ApiError {
    ApiError::internal("writing the report as CSV", &error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::rollup::Dimension;

    fn row(model: &str, requests: u64, cost: &str) -> ReportRow {
        let mut counts = vec![0; count_columns().count()];
        counts[0] = requests;
        ReportRow {
            project: String::new(),
            time: "2026-01-01".into(),
            application: String::new(),
            environment: String::new(),
            provider: String::new(),
            model: model.into(),
            user_id: String::new(),
            counts,
            cost: cost.into(),
        }
    }

    fn encode(format: ReportFormat) -> String {
        let heading = Heading { from: "a".into(), to: "b".into(), tz: "UTC".into() };
        let keys = vec![Key::Time(super::super::query::TimeBucket::Day), Key::Dimension(Dimension::Model)];
        let mut encoder = Encoder::new(format, keys, &heading).unwrap();
        encoder.row(&row("m,1", 2, "0.100000000000")).unwrap();
        encoder.row(&row("m\"2", 3, "0.000000000001")).unwrap();
        encoder.finish().unwrap();
        String::from_utf8(encoder.take().unwrap()).unwrap()
    }

    #[test]
    fn csv_quotes_keys_and_ends_with_exact_totals() {
        let text = encode(ReportFormat::Csv);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("row,day,model,requests,errors,"), "{}", lines[0]);
        assert!(lines[1].starts_with("group,2026-01-01,\"m,1\",2,"), "{}", lines[1]);
        assert!(lines[2].starts_with("group,2026-01-01,\"m\"\"2\",3,"), "{}", lines[2]);
        assert!(lines[3].starts_with("total,,,5,"), "{}", lines[3]);
        assert!(lines[3].contains(",0.100000000001,"), "{}", lines[3]);
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn json_and_ndjson_parse_and_carry_the_totals() {
        let json: serde_json::Value = serde_json::from_str(&encode(ReportFormat::Json)).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), 2);
        assert_eq!(json["rows"][1]["model"], "m\"2");
        assert_eq!(json["totals"]["requests"], 5);
        assert_eq!(json["totals"]["cost"], "0.100000000001");
        assert_eq!(json["group_by"], serde_json::json!(["day", "model"]));
        let text = encode(ReportFormat::Ndjson);
        let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["cost"], "0.1");
        assert_eq!(lines[2]["totals"]["cost"], "0.100000000001");
    }
}

//! The model price table: prices per million tokens by provider and model pattern, each valid
//! from its `effective_from` until the next row of the same provider and pattern.
//!
//! Matching: an exact model name wins; otherwise the longest pattern ending in `*` whose prefix
//! the model starts with. Among the rows of the chosen pattern, the one with the latest
//! `effective_from` not after the call's start applies. A call with no matching price gets no
//! cost (it is counted as unpriced, never booked as zero).
//!
//! Costs follow the OpenTelemetry token semantics: input tokens include cached tokens, so
//! `cost = (input - cache_read - cache_creation) * input_price + cache_read * cache_read_price
//!  + cache_creation * cache_creation_price + output * output_price`, all per million tokens.
//! Prices carry at most 6 decimals, so every cost is exact at 12 decimal places.

use std::collections::HashMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use sqlx::PgPool;
use tally_schemas::Generation;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error("{location}: {reason}")]
    Invalid { location: String, reason: String },
    #[error("reading {path}: {reason}")]
    File { path: String, reason: String },
}

/// One row of `model_prices`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct ModelPrice {
    pub provider: String,
    pub model_pattern: String,
    pub input_per_mtok: Decimal,
    pub output_per_mtok: Decimal,
    pub cache_read_per_mtok: Decimal,
    pub cache_creation_per_mtok: Decimal,
    pub currency: String,
    #[serde(with = "time::serde::rfc3339")]
    pub effective_from: OffsetDateTime,
}

impl ModelPrice {
    fn effective_from_us(&self) -> i64 {
        (self.effective_from.unix_timestamp_nanos() / 1_000) as i64
    }

    /// Checks the invariants the exact-cost guarantee depends on.
    pub fn validate(&self) -> Result<(), String> {
        if self.provider.is_empty() || self.provider != self.provider.to_ascii_lowercase() {
            return Err(format!("provider {:?} must be non-empty and lowercase", self.provider));
        }
        let body = self.model_pattern.strip_suffix('*').unwrap_or(&self.model_pattern);
        if body.is_empty() || body.contains('*') {
            return Err(format!("model_pattern {:?} must be a model name or a prefix ending in '*'", self.model_pattern));
        }
        for (name, price) in [
            ("input_per_mtok", self.input_per_mtok),
            ("output_per_mtok", self.output_per_mtok),
            ("cache_read_per_mtok", self.cache_read_per_mtok),
            ("cache_creation_per_mtok", self.cache_creation_per_mtok),
        ] {
            if price.is_sign_negative() {
                return Err(format!("{name} must not be negative"));
            }
            if price.normalize().scale() > 6 {
                return Err(format!("{name} {price} has more than 6 decimal places"));
            }
        }
        if self.currency != "USD" {
            return Err(format!("currency {:?}: only USD is supported", self.currency));
        }
        Ok(())
    }

    /// The cost of a call with these token counts (OpenTelemetry semantics, see module doc).
    pub fn cost(&self, input: i64, output: i64, cache_read: i64, cache_creation: i64) -> Decimal {
        let uncached = (input - cache_read - cache_creation).max(0);
        let micro_dollars = Decimal::from(uncached) * self.input_per_mtok
            + Decimal::from(cache_read) * self.cache_read_per_mtok
            + Decimal::from(cache_creation) * self.cache_creation_per_mtok
            + Decimal::from(output) * self.output_per_mtok;
        micro_dollars / Decimal::from(1_000_000)
    }
}

/// Prices of one pattern, sorted by `effective_from`.
#[derive(Debug, Default, Clone)]
struct PatternPrices {
    rows: Vec<(i64, ModelPrice)>,
}

impl PatternPrices {
    fn at(&self, time_us: i64) -> Option<&ModelPrice> {
        let position = self.rows.partition_point(|(from, _)| *from <= time_us);
        position.checked_sub(1).map(|index| &self.rows[index].1)
    }
}

/// How a generation's cost was determined (stored as `cost_source`, `Enum8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum CostSource {
    Unpriced = 0,
    Priced = 1,
    Client = 2,
}

/// What [`PriceTable::price`] found for one generation.
#[derive(Debug, Clone, Copy)]
pub struct Pricing<'a> {
    pub cost: Option<Decimal>,
    pub source: CostSource,
    /// The price in force at the generation's start, if the table has one for its model.
    pub price: Option<&'a ModelPrice>,
}

/// The in-memory price table the processor prices with.
#[derive(Debug, Default, Clone)]
pub struct PriceTable {
    /// Per provider, per exact model name (two levels, so a lookup by `&str` allocates nothing).
    exact: HashMap<String, HashMap<String, PatternPrices>>,
    /// Per provider: (prefix, prices), longest prefix first.
    prefixes: HashMap<String, Vec<(String, PatternPrices)>>,
    rows: usize,
}

impl PriceTable {
    pub fn from_rows(rows: Vec<ModelPrice>) -> Self {
        let mut table = PriceTable { rows: rows.len(), ..Default::default() };
        let mut prefixes: HashMap<(String, String), PatternPrices> = HashMap::new();
        for row in rows {
            let entry = (row.effective_from_us(), row.clone());
            if let Some(prefix) = row.model_pattern.strip_suffix('*') {
                prefixes.entry((row.provider.clone(), prefix.to_string())).or_default().rows.push(entry);
            } else {
                table.exact.entry(row.provider.clone()).or_default().entry(row.model_pattern.clone()).or_default().rows.push(entry);
            }
        }
        for prices in table.exact.values_mut().flat_map(HashMap::values_mut) {
            prices.rows.sort_by_key(|(from, _)| *from);
        }
        for ((provider, prefix), mut prices) in prefixes {
            prices.rows.sort_by_key(|(from, _)| *from);
            table.prefixes.entry(provider).or_default().push((prefix, prices));
        }
        for list in table.prefixes.values_mut() {
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        }
        table
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The price for `provider`/`model` at `time_us`, if any.
    pub fn lookup(&self, provider: &str, model: &str, time_us: i64) -> Option<&ModelPrice> {
        if let Some(prices) = self.exact.get(provider).and_then(|models| models.get(model)) {
            if let Some(price) = prices.at(time_us) {
                return Some(price);
            }
        }
        self.prefixes
            .get(provider)?
            .iter()
            .filter(|(prefix, _)| model.starts_with(prefix.as_str()))
            .find_map(|(_, prices)| prices.at(time_us))
    }

    /// The cost of a generation: the client's if given (authoritative), else from the price
    /// in force at its start; `None` (unpriced) when there is neither. Also the price in force,
    /// whoever set the cost: what a cache saved is valued at the table's prices.
    pub fn price(&self, generation: &Generation) -> Pricing<'_> {
        let price = self.lookup(&generation.provider, &generation.model, generation.start_time_us);
        let (cost, source) = match (generation.client_cost, price) {
            (Some(cost), _) => (Some(cost), CostSource::Client),
            (None, Some(price)) => (
                Some(price.cost(
                    generation.input_tokens,
                    generation.output_tokens,
                    generation.cache_read_input_tokens,
                    generation.cache_creation_input_tokens,
                )),
                CostSource::Priced,
            ),
            (None, None) => (None, CostSource::Unpriced),
        };
        Pricing { cost, source, price }
    }

    pub async fn load(pool: &PgPool) -> Result<Self, PriceError> {
        let rows: Vec<ModelPrice> = sqlx::query_as(
            "SELECT provider, model_pattern, input_per_mtok, output_per_mtok, cache_read_per_mtok,
                    cache_creation_per_mtok, currency, effective_from FROM model_prices",
        )
        .fetch_all(pool)
        .await?;
        Ok(Self::from_rows(rows))
    }
}

/// All prices, ordered for display.
pub async fn list(pool: &PgPool) -> Result<Vec<ModelPrice>, PriceError> {
    Ok(sqlx::query_as(
        "SELECT provider, model_pattern, input_per_mtok, output_per_mtok, cache_read_per_mtok,
                cache_creation_per_mtok, currency, effective_from FROM model_prices
         ORDER BY provider, model_pattern, effective_from",
    )
    .fetch_all(pool)
    .await?)
}

/// What an insert does when the row (provider, pattern, effective_from) exists.
#[derive(Clone, Copy)]
enum OnExisting {
    Replace,
    Keep,
}

async fn insert_prices(pool: &PgPool, prices: &[ModelPrice], on_existing: OnExisting) -> Result<u64, PriceError> {
    let conflict = match on_existing {
        OnExisting::Replace => {
            "DO UPDATE SET input_per_mtok = EXCLUDED.input_per_mtok, output_per_mtok = EXCLUDED.output_per_mtok,
                cache_read_per_mtok = EXCLUDED.cache_read_per_mtok,
                cache_creation_per_mtok = EXCLUDED.cache_creation_per_mtok, currency = EXCLUDED.currency"
        }
        OnExisting::Keep => "DO NOTHING",
    };
    let sql = format!(
        "INSERT INTO model_prices (provider, model_pattern, input_per_mtok, output_per_mtok, cache_read_per_mtok,
                                   cache_creation_per_mtok, currency, effective_from)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (provider, model_pattern, effective_from) {conflict}"
    );
    let mut transaction = pool.begin().await?;
    let mut changed = 0;
    for price in prices {
        price.validate().map_err(|reason| PriceError::Invalid { location: format!("{}/{}", price.provider, price.model_pattern), reason })?;
        changed += sqlx::query(&sql)
            .bind(&price.provider)
            .bind(&price.model_pattern)
            .bind(price.input_per_mtok)
            .bind(price.output_per_mtok)
            .bind(price.cache_read_per_mtok)
            .bind(price.cache_creation_per_mtok)
            .bind(&price.currency)
            .bind(price.effective_from)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
    }
    transaction.commit().await?;
    Ok(changed)
}

/// Inserts or replaces prices (same provider, pattern and effective_from = same row), all or
/// nothing.
pub async fn upsert(pool: &PgPool, prices: &[ModelPrice]) -> Result<u64, PriceError> {
    insert_prices(pool, prices, OnExisting::Replace).await
}

/// Inserts prices that are not there yet, leaving existing rows (and operators' edits) alone.
pub async fn seed(pool: &PgPool, prices: &[ModelPrice]) -> Result<u64, PriceError> {
    insert_prices(pool, prices, OnExisting::Keep).await
}

/// The default price list shipped with Tally (`migrations/seed/model_prices.csv`).
pub const DEFAULT_PRICES_CSV: &str = include_str!("../../migrations/seed/model_prices.csv");

/// Parses a price CSV with the header
/// `provider,model_pattern,input_per_mtok,output_per_mtok,cache_read_per_mtok,cache_creation_per_mtok,currency,effective_from`.
/// Errors name the line and column.
pub fn parse_csv(text: &str, source: &str) -> Result<Vec<ModelPrice>, PriceError> {
    const HEADER: [&str; 8] = [
        "provider",
        "model_pattern",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_creation_per_mtok",
        "currency",
        "effective_from",
    ];
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let header = reader.headers().map_err(|error| PriceError::Invalid { location: format!("{source}:1"), reason: error.to_string() })?;
    if header.iter().collect::<Vec<_>>() != HEADER {
        return Err(PriceError::Invalid { location: format!("{source}:1"), reason: format!("the header must be {}", HEADER.join(",")) });
    }
    let mut prices = Vec::new();
    for (number, record) in reader.records().enumerate() {
        let line = number + 2;
        let record = record.map_err(|error| PriceError::Invalid { location: format!("{source}:{line}"), reason: error.to_string() })?;
        let field = |index: usize| record.get(index).unwrap_or_default();
        let decimal = |index: usize| {
            Decimal::from_str(field(index)).map_err(|_| PriceError::Invalid {
                location: format!("{source}:{line} column {}", HEADER[index]),
                reason: format!("{:?} is not a decimal number", field(index)),
            })
        };
        let effective_from = OffsetDateTime::parse(field(7), &Rfc3339).map_err(|_| PriceError::Invalid {
            location: format!("{source}:{line} column effective_from"),
            reason: format!("{:?} is not an RFC 3339 time", field(7)),
        })?;
        let price = ModelPrice {
            provider: field(0).to_string(),
            model_pattern: field(1).to_string(),
            input_per_mtok: decimal(2)?,
            output_per_mtok: decimal(3)?,
            cache_read_per_mtok: decimal(4)?,
            cache_creation_per_mtok: decimal(5)?,
            currency: field(6).to_string(),
            effective_from,
        };
        price.validate().map_err(|reason| PriceError::Invalid { location: format!("{source}:{line}"), reason })?;
        prices.push(price);
    }
    Ok(prices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str, input: &str, from: &str) -> ModelPrice {
        ModelPrice {
            provider: "openai".into(),
            model_pattern: model.into(),
            input_per_mtok: Decimal::from_str(input).unwrap(),
            output_per_mtok: Decimal::from_str("10").unwrap(),
            cache_read_per_mtok: Decimal::from_str("1.25").unwrap(),
            cache_creation_per_mtok: Decimal::from_str(input).unwrap(),
            currency: "USD".into(),
            effective_from: OffsetDateTime::parse(from, &Rfc3339).unwrap(),
        }
    }

    const JAN: i64 = 1_767_225_600_000_000; // 2026-01-01
    const JUL: i64 = 1_782_864_000_000_000; // 2026-07-01

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let table = PriceTable::from_rows(vec![
            price("gpt-4o*", "2.5", "2024-01-01T00:00:00Z"),
            price("gpt-4o-mini*", "0.15", "2024-01-01T00:00:00Z"),
            price("gpt-4o-2024-05-13", "5", "2024-01-01T00:00:00Z"),
        ]);
        assert_eq!(table.lookup("openai", "gpt-4o-mini-2024-07-18", JAN).unwrap().model_pattern, "gpt-4o-mini*");
        assert_eq!(table.lookup("openai", "gpt-4o-2024-08-06", JAN).unwrap().model_pattern, "gpt-4o*");
        assert_eq!(table.lookup("openai", "gpt-4o-2024-05-13", JAN).unwrap().model_pattern, "gpt-4o-2024-05-13");
        assert!(table.lookup("openai", "gpt-3.5-turbo", JAN).is_none());
        assert!(table.lookup("anthropic", "gpt-4o", JAN).is_none());
    }

    #[test]
    fn effective_dates_pick_the_price_in_force() {
        let table = PriceTable::from_rows(vec![
            price("gpt-x", "3", "2026-06-01T00:00:00Z"),
            price("gpt-x", "2", "2025-01-01T00:00:00Z"),
        ]);
        assert_eq!(table.lookup("openai", "gpt-x", JAN).unwrap().input_per_mtok, Decimal::from(2));
        assert_eq!(table.lookup("openai", "gpt-x", JUL).unwrap().input_per_mtok, Decimal::from(3));
        assert!(table.lookup("openai", "gpt-x", 1_700_000_000_000_000).is_none(), "before any price");
    }

    #[test]
    fn cost_is_exact_and_splits_cached_tokens() {
        let p = price("m", "2.5", "2024-01-01T00:00:00Z");
        // 1000 input of which 400 cache reads and 100 cache writes, 200 output:
        // 500*2.5 + 400*1.25 + 100*2.5 + 200*10 = 1250 + 500 + 250 + 2000 = 4000 micro-dollars.
        assert_eq!(p.cost(1000, 200, 400, 100), Decimal::from_str("0.004").unwrap());
        let tiny = price("m", "0.000001", "2024-01-01T00:00:00Z");
        assert_eq!(tiny.cost(1, 0, 0, 0), Decimal::from_str("0.000000000001").unwrap());
    }

    #[test]
    fn the_default_price_list_parses() {
        let prices = parse_csv(DEFAULT_PRICES_CSV, "model_prices.csv").unwrap();
        assert!(prices.len() >= 20, "{} rows", prices.len());
        let table = PriceTable::from_rows(prices);
        assert!(table.lookup("openai", "gpt-4o", JAN).is_some());
        assert!(table.lookup("anthropic", "claude-sonnet-4-5", JAN).is_some() || table.lookup("anthropic", "claude-3-5-sonnet-20241022", JAN).is_some());
    }

    #[test]
    fn csv_errors_name_line_and_column() {
        let text = "provider,model_pattern,input_per_mtok,output_per_mtok,cache_read_per_mtok,cache_creation_per_mtok,currency,effective_from\nopenai,m,abc,1,1,1,USD,2024-01-01T00:00:00Z\n";
        let error = parse_csv(text, "f.csv").unwrap_err().to_string();
        assert!(error.contains("f.csv:2 column input_per_mtok"), "{error}");
        let text = "provider,model_pattern,input_per_mtok,output_per_mtok,cache_read_per_mtok,cache_creation_per_mtok,currency,effective_from\nopenai,m,0.0000001,1,1,1,USD,2024-01-01T00:00:00Z\n";
        assert!(parse_csv(text, "f.csv").unwrap_err().to_string().contains("6 decimal places"));
    }
}

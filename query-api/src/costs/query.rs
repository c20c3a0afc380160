//! The parameters of `GET /v1/costs`, parsed into a [`CostQuery`] with errors that name the
//! parameter. Dimension names become [`Dimension`]s here, before anything reaches SQL.

use std::collections::BTreeMap;

use tally_common::api_error::ApiError;
use tally_common::rollup::Dimension;
use time::OffsetDateTime;

use crate::params::parse_optional_time;

/// A parsed cost query.
#[derive(Debug)]
pub struct CostQuery {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub interval_seconds: u32,
    pub interval: String,
    pub group_by: Vec<Dimension>,
    pub filters: Vec<(Dimension, String)>,
}

impl CostQuery {
    /// Whether the query groups or filters by `dimension`.
    pub fn uses(&self, dimension: Dimension) -> bool {
        self.group_by.contains(&dimension) || self.filters.iter().any(|(filtered, _)| *filtered == dimension)
    }
}

/// Parses the parameters; `extra` names parameters an endpoint reads itself (they are listed
/// in the unknown-parameter error and must be removed from `params` first).
pub fn parse_query(params: &BTreeMap<String, String>, max_range_days: u32, extra: &[&str]) -> Result<CostQuery, ApiError> {
    for name in params.keys() {
        let known = matches!(name.as_str(), "from" | "to" | "interval" | "group_by") || Dimension::parse(name).is_some();
        if !known {
            let extra: String = extra.iter().map(|name| format!(", {name}")).collect();
            return Err(ApiError::bad_parameter(
                name,
                format!("unknown parameter {name:?}; known: from, to, interval, group_by, {}{extra}", Dimension::names()),
            ));
        }
    }
    let to = parse_optional_time("to", params.get("to"))?.unwrap_or_else(OffsetDateTime::now_utc);
    let from = parse_optional_time("from", params.get("from"))?.unwrap_or(to - time::Duration::days(1));
    if from >= to {
        return Err(ApiError::bad_parameter("from", "from must be before to"));
    }
    if to - from > time::Duration::days(i64::from(max_range_days)) {
        return Err(ApiError::bad_parameter("from", format!("the range may cover at most {max_range_days} days")));
    }
    let interval = params.get("interval").map(String::as_str).unwrap_or("hour");
    let interval_seconds = match interval {
        "hour" => 3_600,
        "day" => 86_400,
        _ => return Err(ApiError::bad_parameter("interval", "interval must be hour or day")),
    };
    let mut group_by = Vec::new();
    if let Some(list) = params.get("group_by").filter(|v| !v.is_empty()) {
        for name in list.split(',').map(str::trim) {
            let dimension = Dimension::parse(name)
                .ok_or_else(|| ApiError::bad_parameter("group_by", format!("cannot group by {name:?}; use {}", Dimension::names())))?;
            if !group_by.contains(&dimension) {
                group_by.push(dimension);
            }
        }
    }
    let filters = Dimension::ALL.into_iter().filter_map(|d| params.get(d.column()).map(|v| (d, v.clone()))).collect();
    Ok(CostQuery { from, to, interval_seconds, interval: interval.to_string(), group_by, filters })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases = [
            (vec![("interval", "week")], "interval"),
            (vec![("group_by", "model,region")], "group_by"),
            (vec![("from", "2026-02-01T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")], "from"),
            (vec![("bogus", "1")], "bogus"),
            (vec![("to", "soon")], "to"),
        ];
        for (pairs, parameter) in cases {
            let error = parse_query(&params(&pairs), 400, &[]).unwrap_err();
            assert_eq!(error.parameter.as_deref(), Some(parameter), "{pairs:?}");
        }
    }

    #[test]
    fn group_by_and_filters() {
        let query = parse_query(&params(&[("group_by", "model, application,model"), ("user_id", "u1"), ("interval", "day")]), 400, &[]).unwrap();
        assert_eq!(query.group_by, vec![Dimension::Model, Dimension::Application]);
        assert_eq!(query.filters, vec![(Dimension::UserId, "u1".to_string())]);
        assert_eq!(query.interval_seconds, 86_400);
        assert!(query.uses(Dimension::UserId) && query.uses(Dimension::Model) && !query.uses(Dimension::Provider));
    }
}

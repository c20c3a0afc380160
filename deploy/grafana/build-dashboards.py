#!/usr/bin/env python3
"""Writes the Grafana dashboards of deploy/grafana/dashboards/ (the JSON files Grafana loads).

The dashboards are written by this script, not by hand: every ClickHouse panel shares the same
filters (the project, and each template variable with its custom All value '__all__'), time
buckets and exactness rules, and writing them once here keeps them alike. Edit this file, run
it, and commit both; `--check` exits 1 if the JSON files differ from what it would write
(tests/grafana_dashboards.rs runs that, and then runs every query: docs/grafana.md).
Standard library only.
"""
import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards")
CH = {"type": "grafana-clickhouse-datasource", "uid": "tally-clickhouse"}
PROM = {"type": "prometheus", "uid": "tally-prometheus"}
PG = {"type": "grafana-postgresql-datasource", "uid": "tally-postgres"}

def any_of(var, column):
    return f"('__all__' IN (${{{var}:singlequote}}) OR {column} IN (${{{var}:singlequote}}))"

PROJECT = "project_id = ${project:singlequote}"
DIMS = " AND ".join([PROJECT, any_of("application", "application"), any_of("environment", "environment"), any_of("model", "model")])
USER = any_of("user", "user_id")
BUCKET = "toDateTime(intDiv(toUInt32(hour), greatest($__interval_s, 3600)) * greatest($__interval_s, 3600))"

def rollup(columns, extra=""):
    where = DIMS + " AND " + USER + " AND $__timeFilter(hour)" + extra
    return f"(SELECT {columns} FROM cost_rollup_batches FINAL WHERE {where})"

def cache(columns, extra=""):
    return f"(SELECT {columns} FROM cache_stats_batches FINAL WHERE {DIMS} AND $__timeFilter(hour){extra})"

def windows(columns, extra=""):
    return (f"(SELECT {columns} FROM rate_windows_batches FINAL WHERE {PROJECT} AND "
            f"('__all__' IN (${{subject_kind:singlequote}}) OR subject_kind IN (${{subject_kind:singlequote}})) AND $__timeFilter(minute){extra})")

NO_EMPTY_USER = " AND user_id != ''"
PROMPT_ONLY = " AND cache_kind = 'prompt'"
RAW = "Reads the raw events (table generations), not a rollup: slower over long ranges."

def ch_target(sql, fmt):
    return {"refId": "A", "datasource": CH, "editorType": "sql", "format": fmt, "queryType": "table" if fmt == 1 else "timeseries", "rawSql": sql}

def panel(kind, title, description, targets, x, y, w=12, h=8, unit=None, extra=None):
    p = {"type": kind, "title": title, "description": description, "gridPos": {"x": x, "y": y, "w": w, "h": h},
         "datasource": targets[0]["datasource"], "targets": targets, "fieldConfig": {"defaults": {}, "overrides": []}, "options": {}}
    if unit:
        p["fieldConfig"]["defaults"]["unit"] = unit
    if extra:
        p.update(extra)
    return p

def ts(title, description, sql, x, y, unit=None, w=12):
    return panel("timeseries", title, description, [ch_target(sql, 0)], x, y, w=w, unit=unit)

def table(title, description, sql, x, y, w=12, unit=None):
    return panel("table", title, description, [ch_target(sql, 1)], x, y, w=w, unit=unit)

def stat(title, description, sql, x, y, unit=None, w=6):
    return panel("stat", title, description, [ch_target(sql, 1)], x, y, w=w, h=4, unit=unit,
                 extra={"options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}})

def ch_variable(name, label, sql, include_all=True, multi=True):
    v = {"name": name, "label": label, "type": "query", "datasource": CH, "query": sql, "definition": sql, "refresh": 2,
         "sort": 1, "multi": multi, "includeAll": include_all}
    if include_all:
        v["allValue"] = "'__all__'"
        v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return v

def project_variable(table, time_column):
    return ch_variable("project", "Project", f"SELECT DISTINCT project_id FROM {table} WHERE $__timeFilter({time_column}) ORDER BY project_id", include_all=False, multi=False)

def dim_variable(name, label, column, table="cost_rollup_batches", time_column="hour", extra=""):
    return ch_variable(name, label, f"SELECT DISTINCT {column} FROM {table} WHERE {PROJECT} AND $__timeFilter({time_column}){extra} ORDER BY {column} LIMIT 1000")

def dashboard(uid, title, description, panels, variables, tags):
    return {"uid": uid, "title": title, "description": description, "tags": ["tally"] + tags, "timezone": "utc",
            "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "1m",
            "time": {"from": "now-24h", "to": "now"}, "templating": {"list": variables}, "panels": panels,
            "annotations": {"list": []}, "links": []}

EXACT = "Exact: reads the batch-versioned rollup rows with FINAL, so replays and duplicates count once."
cost_vars = [project_variable("cost_rollup_batches", "hour"), dim_variable("application", "Application", "application"),
             dim_variable("environment", "Environment", "environment"), dim_variable("model", "Model", "model"),
             dim_variable("user", "User", "user_id", extra=" AND user_id != ''")]
costs = dashboard("tally-costs", "Tally: costs", "Cost and tokens of LLM traffic from Tally's cost rollup (ClickHouse).", [
    stat("Total cost (USD)", EXACT, f"SELECT toFloat64(sum(cost)) AS total_cost FROM {rollup('cost')}", 0, 0, unit="currencyUSD"),
    stat("Requests", EXACT, f"SELECT sum(requests) AS total_requests FROM {rollup('requests')}", 6, 0),
    stat("Unpriced requests", "Generations whose model had no price and no client cost: their cost is unknown, not 0. Add a price with `tally prices set`.",
         f"SELECT sum(unpriced_requests) AS total_unpriced FROM {rollup('unpriced_requests')}", 12, 0),
    stat("Average cost per agent run (USD)", RAW + " Runs with at least one generation in the range.",
         f"SELECT toFloat64(sum(run_cost)) / count() AS average_run_cost FROM (SELECT agent_run_id, sum(cost) AS run_cost FROM (SELECT agent_run_id, cost FROM generations FINAL WHERE {DIMS} AND {USER} AND $__timeFilter(start_time) AND isNotNull(agent_run_id)) GROUP BY agent_run_id)", 18, 0, unit="currencyUSD"),
    ts("Cost by application (USD)", EXACT, f"SELECT {BUCKET} AS time, application, toFloat64(sum(cost)) AS cost_usd FROM {rollup('hour, application, cost')} GROUP BY time, application ORDER BY time", 0, 4, unit="currencyUSD"),
    ts("Cost by provider and model (USD)", EXACT, f"SELECT {BUCKET} AS time, concat(provider, '/', model) AS provider_model, toFloat64(sum(cost)) AS cost_usd FROM {rollup('hour, provider, model, cost')} GROUP BY time, provider_model ORDER BY time", 12, 4, unit="currencyUSD"),
    ts("Tokens", "Input tokens include the prompt-cache reads and writes; output tokens include reasoning tokens (OpenTelemetry semantics). " + EXACT,
       f"SELECT {BUCKET} AS time, sum(input_tokens) AS input, sum(output_tokens) AS output, sum(cache_read_input_tokens) AS cache_read, sum(cache_creation_input_tokens) AS cache_creation, sum(reasoning_tokens) AS reasoning FROM {rollup('hour, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, reasoning_tokens')} GROUP BY time ORDER BY time", 0, 12),
    ts("Requests, errors and unpriced requests", EXACT, f"SELECT {BUCKET} AS time, sum(requests) AS all_requests, sum(errors) AS failed, sum(unpriced_requests) AS unpriced FROM {rollup('hour, requests, errors, unpriced_requests')} GROUP BY time ORDER BY time", 12, 12),
    table("Top users by cost", EXACT + " Generations without a user_id are left out.", f"SELECT user_id, sum(requests) AS request_count, sum(input_tokens + output_tokens) AS token_count, toFloat64(sum(cost)) AS cost_usd FROM {rollup('user_id, requests, input_tokens, output_tokens, cost', extra=NO_EMPTY_USER)} GROUP BY user_id ORDER BY cost_usd DESC LIMIT 20", 0, 20),
    table("Top applications by cost", EXACT, f"SELECT application, sum(requests) AS request_count, sum(input_tokens + output_tokens) AS token_count, toFloat64(sum(cost)) AS cost_usd, sum(unpriced_requests) AS unpriced FROM {rollup('application, requests, input_tokens, output_tokens, cost, unpriced_requests')} GROUP BY application ORDER BY cost_usd DESC LIMIT 20", 12, 20),
    table("Costliest agent runs", RAW + " The run's generations in the range; the run history itself is in the query API (`GET /v1/agent/runs`).",
          f"SELECT agent_run_id, count() AS generation_count, toFloat64(sum(cost)) AS cost_usd, min(start_time) AS first_call, max(start_time) AS last_call FROM (SELECT agent_run_id, cost, start_time FROM generations FINAL WHERE {DIMS} AND {USER} AND $__timeFilter(start_time) AND isNotNull(agent_run_id)) GROUP BY agent_run_id ORDER BY cost_usd DESC LIMIT 20", 0, 28, w=24),
], cost_vars, ["costs"])

cache_vars = [project_variable("cache_stats_batches", "hour"), dim_variable("application", "Application", "application", "cache_stats_batches"),
              dim_variable("environment", "Environment", "environment", "cache_stats_batches"), dim_variable("model", "Model", "model", "cache_stats_batches"),
              ch_variable("cache_kind", "Cache", "SELECT DISTINCT cache_kind FROM cache_stats_batches WHERE " + PROJECT + " AND $__timeFilter(hour) ORDER BY cache_kind")]
KIND = any_of("cache_kind", "cache_kind")
CEXACT = "Exact: reads the batch-versioned cache statistics with FINAL. `response` is a response cache in front of the model (a hit is exact or semantic; the hit rate counts both), `prompt` the provider's prompt cache."
cache_dash = dashboard("tally-cache", "Tally: caches", "How well the response caches and the providers' prompt caches pay (ClickHouse cache statistics).", [
    stat("Hit rate", CEXACT, f"SELECT sum(hits + semantic_hits) / greatest(sum(lookups), 1) AS hit_rate FROM {cache('hits, semantic_hits, lookups', ' AND ' + KIND)}", 0, 0, unit="percentunit"),
    stat("Cost saved (USD)", CEXACT + " Hits of unpriced models saved an unknown amount and are not in this sum.", f"SELECT toFloat64(sum(cost_saved)) AS saved_usd FROM {cache('cost_saved', ' AND ' + KIND)}", 6, 0, unit="currencyUSD"),
    stat("Tokens saved", CEXACT, f"SELECT sum(tokens_saved) AS saved_tokens FROM {cache('tokens_saved', ' AND ' + KIND)}", 12, 0),
    stat("Hits of unpriced models", CEXACT, f"SELECT sum(unpriced_hits) AS unknown_savings FROM {cache('unpriced_hits', ' AND ' + KIND)}", 18, 0),
    ts("Hit rate by cache", CEXACT, f"SELECT {BUCKET} AS time, cache_kind, sum(hits + semantic_hits) / greatest(sum(lookups), 1) AS hit_rate FROM {cache('hour, cache_kind, hits, semantic_hits, lookups', ' AND ' + KIND)} GROUP BY time, cache_kind ORDER BY time", 0, 4, unit="percentunit"),
    ts("Lookups: hits, semantic hits, misses", CEXACT, f"SELECT {BUCKET} AS time, sum(hits) AS exact_hits, sum(semantic_hits) AS semantic, sum(misses) AS missed FROM {cache('hour, hits, semantic_hits, misses', ' AND ' + KIND)} GROUP BY time ORDER BY time", 12, 4),
    ts("Cost saved by cache (USD)", CEXACT, f"SELECT {BUCKET} AS time, cache_kind, toFloat64(sum(cost_saved)) AS saved_usd FROM {cache('hour, cache_kind, cost_saved', ' AND ' + KIND)} GROUP BY time, cache_kind ORDER BY time", 0, 12, unit="currencyUSD"),
    ts("Prompt-cache tokens", CEXACT, f"SELECT {BUCKET} AS time, sum(cache_read_input_tokens) AS read_tokens, sum(cache_creation_input_tokens) AS written_tokens, sum(tokens_saved) AS saved_tokens FROM {cache('hour, cache_read_input_tokens, cache_creation_input_tokens, tokens_saved', PROMPT_ONLY)} GROUP BY time ORDER BY time", 12, 12),
    table("Response-cache latency: hits against misses", RAW + " Exact percentiles of duration; `GET /v1/cache/stats` gives the same from the rollup's histograms.",
          f"SELECT toString(cache_status) AS outcome, count() AS generation_count, quantileExact(0.5)(duration_us) / 1000 AS p50_ms, quantileExact(0.95)(duration_us) / 1000 AS p95_ms, quantileExact(0.99)(duration_us) / 1000 AS p99_ms FROM (SELECT cache_status, duration_us FROM generations FINAL WHERE {DIMS} AND $__timeFilter(start_time) AND cache_status != 'none') GROUP BY outcome ORDER BY outcome", 0, 20, w=24),
], cache_vars, ["cache"])

WEXACT = "Exact closed windows: reads the batch-versioned rate-window rows with FINAL (per minute of event time). The live windows are in Redis (`GET /v1/ratelimits/{kind}/{subject}`)."
limit_vars = [project_variable("rate_windows_batches", "minute"),
              ch_variable("subject_kind", "Subject kind", "SELECT DISTINCT subject_kind FROM rate_windows_batches WHERE " + PROJECT + " AND $__timeFilter(minute) ORDER BY subject_kind")]
PER_MINUTE = "SELECT subject_kind, subject, minute, sum(requests) AS minute_requests, sum(tokens) AS minute_tokens, sum(cost) AS minute_cost FROM {src} GROUP BY subject_kind, subject, minute"

def judged(resolution):
    # Current ClickHouse wants an alias on each joined subquery (18.16 takes them too).
    # ClickHouse 18.16 crashes (a segfault in ColumnDecimal::deserializeAndInsertFromArena) when a
    # GROUP BY key or an aggregate state after this JOIN holds a Decimal128: the limit and the
    # window's cost therefore travel as text and become decimals again at the end.
    if resolution == "minute":
        window, length, metrics = "minute", 60, "('requests_per_minute', 'tokens_per_minute')"
        time_filter = "$__timeFilter(minute)"
        used = "multiIf(metric = 'requests_per_minute', toString(window_requests), toString(window_tokens))"
    else:
        window, length, metrics = "toDateTime(intDiv(toUInt32(minute), 86400) * 86400)", 86400, "('tokens_per_day', 'cost_per_day')"
        time_filter = "minute >= toDateTime(intDiv(toUInt32($__fromTime), 86400) * 86400) AND minute <= $__toTime"
        used = "multiIf(metric = 'tokens_per_day', toString(window_tokens), window_cost_text)"
    kind = "('__all__' IN (${subject_kind:singlequote}) OR subject_kind IN (${subject_kind:singlequote}))"
    windows_sql = (f"SELECT project_id, subject_kind, subject, window_start, window_requests, window_tokens, toString(window_cost) AS window_cost_text FROM ("
                   f"SELECT project_id, subject_kind, subject, {window} AS window_start, sum(requests) AS window_requests, sum(tokens) AS window_tokens, sum(cost) AS window_cost "
                   f"FROM (SELECT project_id, subject_kind, subject, minute, requests, tokens, cost FROM rate_windows_batches FINAL WHERE {PROJECT} AND {kind} AND {time_filter}) "
                   f"GROUP BY project_id, subject_kind, subject, window_start)")
    limits_sql = (f"SELECT project_id, subject_kind, subject AS limit_subject, metric, ifNull(toString(value), 'deleted') AS limit_text, effective_from_us, id "
                  f"FROM subject_limits FINAL WHERE {PROJECT} AND metric IN {metrics}")
    joined = (f"SELECT subject_kind, subject, window_start, metric, any({used}) AS used_text, "
              f"argMaxIf(limit_text, (effective_from_us, id), limit_subject = subject) AS own_limit, countIf(limit_subject = subject) AS own_changes, "
              f"argMaxIf(limit_text, (effective_from_us, id), limit_subject = '') AS default_limit, countIf(limit_subject = '') AS default_changes "
              f"FROM ({windows_sql}) AS windows ALL INNER JOIN ({limits_sql}) AS limits USING (project_id, subject_kind) "
              f"WHERE (limit_subject = subject OR limit_subject = '') AND effective_from_us <= (toInt64(toUInt32(window_start)) + {length}) * 1000000 - 1 "
              f"GROUP BY subject_kind, subject, window_start, metric")
    chosen = ("multiIf(own_changes > 0 AND own_limit != 'deleted', own_limit, default_changes > 0 AND default_limit != 'deleted', default_limit, '')")
    return (f"SELECT subject_kind, subject, window_start, metric, toDecimal128(used_text, 12) AS used, toDecimal128(limit_in_force, 12) AS limit_value "
            f"FROM (SELECT subject_kind, subject, window_start, metric, used_text, {chosen} AS limit_in_force FROM ({joined})) WHERE limit_in_force != ''")

JUDGED = ("Each closed window (by event time) judged against the limit in force at its end, the subject's own else its kind's default, "
          "as `GET /v1/ratelimits/violations` judges it (tests/grafana_dashboards.rs compares the two). The limits are a copy of Postgres's "
          "in ClickHouse (`subject_limits`, refreshed by the processors every few seconds).")
limits_dash = dashboard("tally-rate-limits", "Tally: rate limits", "Who is close to a limit: per-minute and per-day usage per subject (ClickHouse), and the limits in force (Postgres).", [
    table("Busiest subjects: peak minute", WEXACT, f"SELECT subject_kind, subject, max(minute_requests) AS peak_requests_per_minute, max(minute_tokens) AS peak_tokens_per_minute FROM ({PER_MINUTE.format(src=windows('subject_kind, subject, minute, requests, tokens, cost'))}) GROUP BY subject_kind, subject ORDER BY peak_requests_per_minute DESC LIMIT 20", 0, 0),
    table("Busiest subjects: per day", WEXACT, f"SELECT subject_kind, subject, toDate(minute) AS day, sum(requests) AS day_requests, sum(tokens) AS day_tokens, toFloat64(sum(cost)) AS day_cost_usd FROM {windows('subject_kind, subject, minute, requests, tokens, cost')} GROUP BY subject_kind, subject, day ORDER BY day_tokens DESC LIMIT 20", 12, 0),
    ts("Requests per minute, 10 busiest subjects", WEXACT, f"SELECT minute AS time, concat(subject_kind, ':', subject) AS who, sum(requests) AS requests_per_minute FROM {windows('subject_kind, subject, minute, requests')} WHERE concat(subject_kind, ':', subject) IN (SELECT who_top FROM (SELECT concat(subject_kind, ':', subject) AS who_top, sum(requests) AS total FROM {windows('subject_kind, subject, requests')} GROUP BY who_top ORDER BY total DESC LIMIT 10)) GROUP BY time, who ORDER BY time", 0, 8),
    ts("Tokens per minute, 10 busiest subjects", WEXACT, f"SELECT minute AS time, concat(subject_kind, ':', subject) AS who, sum(tokens) AS tokens_per_minute FROM {windows('subject_kind, subject, minute, tokens')} WHERE concat(subject_kind, ':', subject) IN (SELECT who_top FROM (SELECT concat(subject_kind, ':', subject) AS who_top, sum(tokens) AS total FROM {windows('subject_kind, subject, tokens')} GROUP BY who_top ORDER BY total DESC LIMIT 10)) GROUP BY time, who ORDER BY time", 12, 8),
    ts("Minute windows over their limit", JUDGED, f"SELECT toDateTime(intDiv(toUInt32(window_start), greatest($__interval_s, 60)) * greatest($__interval_s, 60)) AS time, metric, countIf(used > limit_value) AS windows_over_limit FROM ({judged('minute')}) GROUP BY time, metric ORDER BY time", 0, 16),
    ts("Day windows over their limit", JUDGED, f"SELECT toDateTime(intDiv(toUInt32(window_start), greatest($__interval_s, 86400)) * greatest($__interval_s, 86400)) AS time, metric, countIf(used > limit_value) AS windows_over_limit FROM ({judged('day')}) GROUP BY time, metric ORDER BY time", 12, 16),
    table("Closest to their limits", JUDGED + " peak_share_of_limit is the busiest window's usage over its limit (above 1: over).", f"SELECT subject_kind, subject, metric, max(toFloat64(used) / toFloat64(limit_value)) AS peak_share_of_limit, countIf(used > limit_value) AS windows_over_limit FROM ({judged('minute')} UNION ALL {judged('day')}) WHERE limit_value > 0 GROUP BY subject_kind, subject, metric ORDER BY peak_share_of_limit DESC LIMIT 20", 0, 24, w=24),
    panel("table", "Limits in force", "From Postgres (`subject_limits`, as set with `tally limits set` or `PUT /v1/limits`): the newest value of each limit that is in force now. An empty subject is the project-wide default of its kind.",
          [{"refId": "A", "datasource": PG, "editorMode": "code", "format": "table", "rawQuery": True,
            "rawSql": "SELECT subject_kind, CASE WHEN subject = '' THEN '(default)' ELSE subject END AS limited_subject, metric, trim_scale(value)::text AS limit_value, effective_from FROM (SELECT DISTINCT ON (subject_kind, subject, metric) subject_kind, subject, metric, value, effective_from FROM subject_limits WHERE project_id = ${project:sqlstring} AND effective_from <= now() ORDER BY subject_kind, subject, metric, effective_from DESC, id DESC) AS latest WHERE value IS NOT NULL ORDER BY subject_kind, subject, metric"}],
          0, 32, w=24),
], limit_vars, ["rate-limits"])

def prom(title, description, exprs, x, y, unit=None, w=12):
    targets = [{"refId": chr(65 + i), "datasource": PROM, "expr": e, "legendFormat": legend, "range": True} for i, (e, legend) in enumerate(exprs)]
    return panel("timeseries", title, description, targets, x, y, w=w, unit=unit)

RI = "$__rate_interval"
pipeline = dashboard("tally-pipeline", "Tally: pipeline health", "The services' own metrics (Prometheus; docs/metrics.md).", [
    prom("Ingest: events per second by outcome", "tally_ingest_events_total.", [(f"sum by (outcome) (rate(tally_ingest_events_total[{RI}]))", "{{outcome}}")], 0, 0, unit="ops"),
    prom("Ingest: answers by status, refusals by reason", "HTTP answers of POST /v1/events, and requests refused before parsing (quota, overload, slow bodies).",
         [(f'sum by (status) (rate(tally_http_requests_total{{job="ingest", route="/v1/events"}}[{RI}]))', "HTTP {{status}}"),
          (f"sum by (reason) (rate(tally_ingest_refused_requests_total[{RI}]))", "refused: {{reason}}")], 12, 0, unit="reqps"),
    prom("Ingest: produce latency", "Time until Kafka acknowledged a request's events.",
         [(f"histogram_quantile(0.5, sum by (le) (rate(tally_ingest_produce_seconds_bucket[{RI}])))", "p50"),
          (f"histogram_quantile(0.99, sum by (le) (rate(tally_ingest_produce_seconds_bucket[{RI}])))", "p99")], 0, 8, unit="s"),
    prom("Processor: consumer lag per partition", "Messages behind the end of each partition of the events topic.",
         [("max by (partition) (tally_processor_consumer_lag)", "partition {{partition}}")], 12, 8),
    prom("Processor: messages per second by outcome", "tally_processor_messages_total.", [(f"sum by (outcome) (rate(tally_processor_messages_total[{RI}]))", "{{outcome}}")], 0, 16, unit="ops"),
    prom("Processor: batch steps, p99", "Each step of a batch write (docs/exactly-once.md).",
         [(f"histogram_quantile(0.99, sum by (le, step) (rate(tally_processor_step_seconds_bucket[{RI}])))", "{{step}}")], 12, 16, unit="s"),
    prom("Processor: store errors and waits", "Failed store calls per second, and whether a processor waits for a store.",
         [(f"sum by (store) (rate(tally_processor_store_errors_total[{RI}]))", "errors: {{store}}"),
          ("max by (store) (tally_processor_waiting_for)", "waiting for: {{store}}")], 0, 24),
    prom("Dead letters per hour", "Events sent to the dead-letter topic, by kind (undecodable, rejected); `tally dlq` lists and replays them.",
         [("sum by (kind) (increase(tally_processor_dead_lettered_total[1h]))", "{{kind}}")], 12, 24),
    prom("Query API: latency p99 by route", "tally_http_request_duration_seconds of the query API.",
         [(f'histogram_quantile(0.99, sum by (le, route) (rate(tally_http_request_duration_seconds_bucket{{job="query-api"}}[{RI}])))', "{{route}}")], 0, 32, unit="s"),
    prom("Query API: answers by status", "tally_http_requests_total of the query API.",
         [(f'sum by (status) (rate(tally_http_requests_total{{job="query-api"}}[{RI}]))', "{{status}}")], 12, 32, unit="reqps"),
], [], ["pipeline"])

def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, d in [("costs", costs), ("cache", cache_dash), ("rate-limits", limits_dash), ("pipeline", pipeline)]:
        for i, p in enumerate(d["panels"]):
            p["id"] = i + 1
        path = os.path.join(OUT, f"tally-{name}.json")
        text = json.dumps(d, indent=2) + "\n"
        if check:
            with open(path) as f:
                if f.read() != text:
                    stale.append(path)
        else:
            os.makedirs(OUT, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    if stale:
        print("not what deploy/grafana/build-dashboards.py writes (run it): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Turns the JSON reports of scripts/bench (a.json, b.json, c.json, d-fill.json, d.json) into docs/performance.md."""
import json
import subprocess
import sys
from pathlib import Path

out = Path(sys.argv[1])
reports = {name: json.loads((out / f"{name}.json").read_text()) for name in "abc" if (out / f"{name}.json").exists()}
first = next(iter(reports.values()), None) or json.loads((out / "d-fill.json").read_text())
machine = first["machine"]


def version(command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - a missing tool just leaves the cell empty
        return "?"


def fmt(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def mem(report, name):
    for service in report.get("memory", []):
        if service["name"] == name:
            peak = service.get("lifetime_peak_rss_bytes") or service.get("peak_rss_bytes")
            return "-" if peak is None else f"{peak / 2**20:,.0f} MiB"
    return "-"


print("# Performance\n")
print("Measured by `scripts/bench` (re-run it to refresh this page). Everything ran on one machine: the Kafka broker, "
      "ClickHouse, Postgres, Redis, the three Tally services and the load generator shared its cores, so the figures are "
      "for the whole pipeline colocated, not for any one component. These machines are shared and noisy: treat single "
      "figures as +-15 %.\n")
print(f"- machine: {machine.get('cpus')} cores, {machine.get('cpu_model')}, {fmt((machine.get('memory_bytes') or 0) / 2**30, 1)} GiB, kernel {machine.get('kernel')}")
print(f"- date: {first['started_at']}; {version(['cargo', '--version'])}; Kafka 4.1.1 (KRaft, 1 node, heap 768 MiB, G1 with a 20 ms pause goal); {version(['clickhouse-client', '--version'])}; PostgreSQL 15; release build")
s = first["settings"]
priority_file = out / "cpu-priority.txt"
priority = priority_file.read_text().strip() if priority_file.exists() else "off"
print("- CPU priority: " + ("ingest and Kafka (the acknowledgement path) in a cgroup with 64 times the CPU weight of the processor, "
      "ClickHouse and Postgres (scripts/cpu-priority; weights only matter while the cores are busy)" if priority == "on"
      else "none (BENCH_CPU_PRIORITY=off): every process has the same weight"))
jitters = [(when, json.loads((out / f"jitter-{when}.json").read_text())) for when in ("before", "after") if (out / f"jitter-{when}.json").exists()]
if jitters:
    print("- machine steadiness (`tally-loadtest cpu-jitter`, stack idle; a fixed piece of computation on each core with pauses in between, "
          "so every millisecond above the undisturbed time is the machine's, not Tally's): " + "; ".join(
        f"{when} the scenarios, {j['undisturbed_ms']:.1f} ms pieces took p50 {j['wall_ms']['p50']:.1f} / p99 {j['wall_ms']['p99']:.1f} / "
        f"p99.9 {j['wall_p999_ms']:.1f} / max {j['wall_ms']['max']:.1f} ms, {j['over_5x_share'] * 100:.2f} % over 5x"
        + f" (counted by the guest kernel as time on the CPU: p99 {j['on_cpu_ms']['p99']:.1f} / max {j['on_cpu_ms']['max']:.1f} ms)"
        + ", CPU steal "
        + ("not reported" if j.get('steal_share') is None else f"{j['steal_share'] * 100:.2f} %")
        for when, j in jitters))
print(f"- load: {s.get('connections')} connections, {s.get('batch_size')}-event batches, JSON bodies, "
      f"{fmt(s.get('cache_hit_share'), 2)} cache-hit share, {fmt(s.get('duplicate_share'), 3)} duplicates, {fmt(s.get('invalid_share'), 3)} invalid\n")

print("| scenario | accepted events/s | request p50 / p95 / p99 / max (ms) | processor events/s (drain) | e2e lag p50 / p99 (ms) | peak RSS ingest / processor |")
print("|---|---|---|---|---|---|")
names = {"a": "(a) ingest only, max throughput", "b": "(b) end to end, ingest at max (processor starved; see sustained below)", "c": "(c) half of (b)'s sustained rate"}
for key, report in reports.items():
    latency = report["latency_ms"]
    processor = report.get("processor") or {}
    lag = (report.get("end_to_end_lag") or {}).get("lag_ms") or {}
    lag_cell = "-" if not lag else f"{fmt(lag.get('p50'))} / {fmt(lag.get('p99'))}"
    target = report.get("target_events_per_sec")
    name = names[key] + (f" (target {fmt(target)}/s)" if target else "")
    print(f"| {name} | {fmt(report['accepted_events_per_sec'])} | {fmt(latency['p50'], 1)} / {fmt(latency['p95'], 1)} / "
          f"{fmt(latency['p99'], 1)} / {fmt(latency['max'], 1)} | {fmt(processor.get('processed_per_sec'))} | {lag_cell} | "
          f"{mem(report, 'ingest')} / {mem(report, 'processor')} |")

checks = [(names[key], report["limit_checks"]) for key, report in reports.items() if report.get("limit_checks")]
if checks:
    print("\n**Rate-limit checks** (`GET /v1/ratelimits/user/{user}`, users drawn with the traffic's Zipf skew, what a gateway asks before a call; "
          "reads Redis only; goal p99 < 5 ms at half load):\n")
    print("| scenario | checks/s | checks | ok / 503 / errors | p50 / p95 / p99 / max (ms) |")
    print("|---|---|---|---|---|")
    for name, c in checks:
        latency = c["latency_ms"]
        print(f"| {name} | {fmt(c['per_sec'])} | {c['checks']:,} | {c['ok']:,} / {c['unavailable']:,} / {c['errors']:,} | "
              f"{fmt(latency['p50'], 2)} / {fmt(latency['p95'], 2)} / {fmt(latency['p99'], 2)} / {fmt(latency['max'], 2)} |")

steps = sorted(out.glob("b-step-*.json"), key=lambda path: int(path.stem.rsplit("-", 1)[1]))
if steps:
    sustained = (out / "b-sustained.txt").read_text().strip() if (out / "b-sustained.txt").exists() else "?"
    print(f"\n**(b) sustained end to end: {fmt(float(sustained)) if sustained != '?' else '?'} events/s.** Fixed-rate runs from the processor's "
          "drain rate, 15 % up while the processor keeps up and down until it does; keeping up = at least 97 % of the target accepted "
          "and a consumer lag of at most 2 s of traffic when the load stops:\n")
    print("| target events/s | accepted events/s | processor events/s during load | lag at load end | request p99 (ms) | kept up |")
    print("|---|---|---|---|---|---|")
    for path in steps:
        r = json.loads(path.read_text())
        p = r.get("processor") or {}
        target = r["target_events_per_sec"]
        kept = r["accepted_events_per_sec"] >= 0.97 * target and (p.get("consumer_lag_at_load_end") or 0) <= 2 * target and p.get("drained")
        print(f"| {fmt(target)} | {fmt(r['accepted_events_per_sec'])} | {fmt(p.get('processed_per_sec_during_load'))} | "
              f"{fmt(p.get('consumer_lag_at_load_end'))} | {fmt(r['latency_ms']['p99'], 1)} | {'yes' if kept else 'no'} |")

print("\nRequests by status:\n")
for key, report in reports.items():
    print(f"- {names[key]}: {json.dumps(report['requests']['by_status'])}, events sent {report['events']['sent']:,}, "
          f"accepted {report['events']['accepted']:,}, rejected {report['events']['rejected']:,}")
print("\nThe load generator's own rate while busy: "
      + ", ".join(f"{fmt(r['generator'].get('events_per_busy_sec'))}/s" for r in reports.values())
      + " (it is not the bottleneck when this is well above the accepted rate).")
query = json.loads((out / "d.json").read_text()) if (out / "d.json").exists() else None
fill = json.loads((out / "d-fill.json").read_text()) if (out / "d-fill.json").exists() else None
if query:
    print("\n## (d) Query latency on a large store\n")
    if fill:
        processor = fill.get("processor") or {}
        print(f"Filled through the whole pipeline (ingest, Kafka, processor, compaction every 10 s) with `tally-loadtest load --spread-over 30d`: "
              f"{fill['events']['accepted']:,} events accepted at {fmt(fill['accepted_events_per_sec'])}/s, event times spread evenly over the 30 days "
              f"before the run; the processor drained them at {fmt(processor.get('processed_per_sec'))}/s. "
              f"Peak RSS: ingest {mem(fill, 'ingest')}, processor {mem(fill, 'processor')}, query API {mem(fill, 'query-api')}.\n")
    print(f"`tally-loadtest query-bench` ({query['started_at']}): {query['requests_per_endpoint']} sequential calls per endpoint after 10 warm-up calls, "
          f"on an otherwise idle pipeline.\n")
    print("| endpoint | p50 / p95 / p99 / max (ms) | items in the answer | requests counted in the answer |")
    print("|---|---|---|---|")
    for endpoint in query["endpoints"]:
        latency = endpoint["latency_ms"]
        print(f"| {endpoint['name']} | {fmt(latency['p50'], 1)} / {fmt(latency['p95'], 1)} / {fmt(latency['p99'], 1)} / {fmt(latency['max'], 1)} "
              f"| {endpoint['items']:,} | {fmt(endpoint.get('requests_in_answer'))} |")
    rss = query.get("query_api_peak_rss_kb")
    if rss:
        print(f"\nReports are timed over {query.get('report_requests', 20)} sequential calls after one warm-up call; items are the report's groups. "
              f"The query API's peak RSS (VmHWM) was {rss[0] / 1024:.1f} MiB before the reports and {rss[1] / 1024:.1f} MiB after them: "
              f"reports are streamed, so a larger report does not raise it.")
else:
    print("\n(d) query latency on a store of 10M generation events: not run (BENCH_SCENARIOS=d).")
replay = out / "e" / "results.txt"
if replay.exists():
    print("\n## (e) Replay beside the drain rate\n")
    print("`scripts/drain` with `DRAIN_REPLAY=on`, services stopped: ingest alone fills a fresh topic, the processor alone drains it "
          "(timed from its start), then `tally replay` recomputes those hours from Kafka and from the archive (ClickHouse's raw rows) "
          "with the processor stopped. *read* counts every message or row read, *events* those that made derived rows "
          "(duplicates and invalid events are read, not counted). Goal: replay read/s at least the drain's events/s.\n")
    for line in replay.read_text().strip().splitlines():
        print(f"- {line.strip()}")
notes = Path(__file__).resolve().parent.parent / "docs" / "performance-notes.md"
if notes.exists():
    print("\n" + notes.read_text().strip())

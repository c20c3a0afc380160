//! `tally-loadtest cpu-jitter`: how steady this machine's CPUs are, as the floor under every
//! latency figure the benchmarks report.
//!
//! On a shared virtual machine the hypervisor lends our vCPUs to other guests, and the guest
//! counts the time it was away as the running thread's own CPU time. A request that needs 3 ms
//! of CPU then sometimes takes 20 or 40 ms, with no scheduling delay, page fault or lock on our
//! side (measured in ingest's prepare step, docs/performance-notes.md). No code change removes
//! that tail, so the benchmark measures it and reports it next to the results: one thread per
//! CPU repeats a fixed piece of pure computation (no memory allocation, no system call), sleeps
//! a little between pieces the way a service waits for its next request, and records how long
//! each piece took. On a quiet, dedicated machine every piece takes about as long as the
//! fastest; the percentiles above that are what the machine adds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::Percentiles;
use crate::settings::parse_duration;

#[derive(Debug, Args)]
pub struct CpuJitterArgs {
    /// How long to measure.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// CPU time of one piece of work on an undisturbed CPU, in milliseconds (calibrated at start).
    #[arg(long, default_value_t = 2.0)]
    pub work_ms: f64,
    /// Pause between two pieces, in milliseconds (a service idling between requests).
    #[arg(long, default_value_t = 5.0)]
    pub idle_ms: f64,
    /// Measuring threads; default one per CPU.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct CpuJitterReport {
    pub threads: usize,
    pub measured_secs: f64,
    /// The fastest piece of the run: the piece's cost on an undisturbed CPU.
    pub undisturbed_ms: f64,
    /// Wall-clock time per piece (`samples` is the number of pieces).
    pub wall_ms: Percentiles,
    pub wall_p999_ms: f64,
    /// The same pieces' time on the CPU as this guest's kernel counts it (the thread's CPU
    /// clock): when these percentiles match the wall-clock ones, the lost time was not spent
    /// waiting for a CPU behind other processes, but below the guest (the hypervisor, or a busy
    /// host core).
    pub on_cpu_ms: Percentiles,
    /// Share of pieces that took more than 5 times the undisturbed time.
    pub over_5x_share: f64,
    /// CPU steal reported by the kernel over the run (`/proc/stat`), when the hypervisor reports it.
    pub steal_share: Option<f64>,
}

/// A fixed amount of integer work the optimiser cannot remove or shorten.
fn work(iterations: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    std::hint::black_box(x)
}

/// Iterations for one piece, and the fastest time of that piece (ms).
fn calibrate(work_ms: f64) -> (u64, f64) {
    let probe = 200_000u64;
    let fastest = |iterations: u64| {
        (0..30)
            .map(|_| {
                let start = Instant::now();
                work(iterations);
                start.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    let per_iteration = fastest(probe) / probe as f64;
    let iterations = ((work_ms / per_iteration) as u64).max(1);
    (iterations, fastest(iterations))
}

/// This thread's CPU time so far, in microseconds.
fn thread_cpu_micros() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// (total, steal) jiffies of all CPUs from /proc/stat, where it exists.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    Some((fields.iter().take(8).sum(), *fields.get(7)?))
}

pub fn run(args: CpuJitterArgs) -> anyhow::Result<CpuJitterReport> {
    anyhow::ensure!(args.work_ms > 0.0 && args.idle_ms >= 0.0, "--work-ms must be positive and --idle-ms not negative");
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1)).max(1);
    let (iterations, calibrated_ms) = calibrate(args.work_ms);
    eprintln!(
        "[cpu-jitter] {threads} thread(s), {:.2} ms pieces with {:.1} ms pauses, for {:?}",
        calibrated_ms, args.idle_ms, args.duration
    );
    let jiffies_before = cpu_jiffies();
    let started = Instant::now();
    let deadline = started + args.duration;
    let idle = Duration::from_secs_f64(args.idle_ms / 1e3);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                // Microseconds, 1 µs to 10 s, 3 significant digits.
                let mut wall = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("valid histogram bounds");
                let mut on_cpu = wall.clone();
                while Instant::now() < deadline {
                    let cpu_before = thread_cpu_micros();
                    let start = Instant::now();
                    work(iterations);
                    wall.saturating_record(start.elapsed().as_micros() as u64);
                    on_cpu.saturating_record(thread_cpu_micros().saturating_sub(cpu_before));
                    std::thread::sleep(idle);
                }
                (wall, on_cpu)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("valid histogram bounds");
    let mut all_on_cpu = all.clone();
    for worker in workers {
        let (wall, on_cpu) = worker.join().map_err(|_| anyhow::anyhow!("a measuring thread panicked"))?;
        all.add(&wall).context("merging the threads' histograms")?;
        all_on_cpu.add(&on_cpu).context("merging the threads' histograms")?;
    }
    let measured_secs = started.elapsed().as_secs_f64();
    let steal_share = match (jiffies_before, cpu_jiffies()) {
        (Some((total0, steal0)), Some((total1, steal1))) if total1 > total0 => {
            Some((steal1 - steal0) as f64 / (total1 - total0) as f64)
        }
        _ => None,
    };
    // The fastest piece of the whole run, not of the calibration: a slow spell during the 30
    // calibration pieces would otherwise make every later piece look undisturbed.
    let undisturbed_ms = if all.is_empty() { calibrated_ms } else { all.min() as f64 / 1e3 };
    let over_5x = all.count_between((undisturbed_ms * 5_000.0) as u64, u64::MAX);
    let wall_ms = Percentiles::from_micros(&all);
    let report = CpuJitterReport {
        threads,
        measured_secs,
        undisturbed_ms,
        wall_p999_ms: all.value_at_quantile(0.999) as f64 / 1e3,
        on_cpu_ms: Percentiles::from_micros(&all_on_cpu),
        over_5x_share: if all.is_empty() { 0.0 } else { over_5x as f64 / all.len() as f64 },
        steal_share,
        wall_ms,
    };
    println!(
        "cpu-jitter: {} pieces of {:.2} ms (undisturbed) on {} thread(s) in {:.0} s: p50 {:.2} ms, p99 {:.2} ms ({:.1}x), p99.9 {:.2} ms, max {:.2} ms; {:.2} % took over 5x; on the CPU as the kernel counts it: {}; steal {}",
        report.wall_ms.samples,
        report.undisturbed_ms,
        report.threads,
        report.measured_secs,
        report.wall_ms.p50,
        report.wall_ms.p99,
        report.wall_ms.p99 / report.undisturbed_ms,
        report.wall_p999_ms,
        report.wall_ms.max,
        report.over_5x_share * 100.0,
        format!("p99 {:.2} ms, max {:.2} ms", report.on_cpu_ms.p99, report.on_cpu_ms.max),
        report.steal_share.map_or("not reported".to_string(), |s| format!("{:.2} %", s * 100.0)),
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_scales_iterations_with_the_requested_time() {
        let (short, _) = calibrate(0.2);
        let (long, _) = calibrate(2.0);
        // Ten times the time is about ten times the work; a noisy machine bends it, not by 3x.
        let ratio = long as f64 / short as f64;
        assert!((3.0..30.0).contains(&ratio), "0.2 ms -> {short} iterations, 2 ms -> {long}");
    }

    #[test]
    fn a_short_run_measures_pieces_and_orders_its_percentiles() {
        let report = run(CpuJitterArgs {
            duration: Duration::from_millis(300),
            work_ms: 0.5,
            idle_ms: 0.5,
            threads: Some(1),
            json: None,
        })
        .unwrap();
        let wall = &report.wall_ms;
        assert!(wall.samples >= 10, "{report:?}");
        assert!(wall.p50 <= wall.p99 && wall.p99 <= report.wall_p999_ms && report.wall_p999_ms <= wall.max, "{report:?}");
        // Calibrated to 0.5 ms: the typical piece is near that, even on a noisy machine.
        assert!((0.1..5.0).contains(&wall.p50), "{report:?}");
        assert!(report.undisturbed_ms > 0.0 && report.undisturbed_ms <= wall.p50, "{report:?}");
        // Pure computation: its CPU time is close to its wall time, and never much above it.
        assert_eq!(report.on_cpu_ms.samples, wall.samples);
        assert!(report.on_cpu_ms.p50 > wall.p50 * 0.5 && report.on_cpu_ms.p50 <= wall.p50 * 1.1, "{report:?}");
    }
}

//! `tally-loadtest`: the load generator and the benchmarks' other tools, as a binary of their
//! own so that the service binary (`tally`, what `scripts/up` and the Docker image build) does
//! not compile them. `scripts/bench` builds and runs it; `tally-loadtest <command> --help`
//! lists the flags.
//!
//! - `load`: realistic traffic against `POST /v1/events` ([`tally_loadtest::run`]).
//! - `query-bench`: the latency of the query API's read endpoints.
//! - `cpu-jitter`: how steady this machine's CPUs are.

use clap::{Parser, Subcommand};

/// The generator allocates per event the way the services do, and the benchmark figures were
/// measured with it running on mimalloc (inside `tally` then): keep the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tally-loadtest", version, about = "Tally's load generator and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate realistic load against the ingest service and report throughput, latency, lag and memory.
    Load(tally_loadtest::LoadtestArgs),
    /// Measure the latency of the query API's read endpoints (cost queries over a range, run pages).
    QueryBench(tally_loadtest::query_bench::QueryBenchArgs),
    /// Measure how steady this machine's CPUs are: percentiles of a fixed piece of computation.
    CpuJitter(tally_loadtest::cpu_jitter::CpuJitterArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        // Plain threads of its own; no runtime needed.
        Command::CpuJitter(args) => tally_loadtest::cpu_jitter::run(args).map(|_| ()),
        Command::Load(args) => runtime()?.block_on(tally_loadtest::run(args)).map(|_| ()),
        Command::QueryBench(args) => runtime()?.block_on(tally_loadtest::query_bench::run(args)).map(|_| ()),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

//! The workload: realistic, reproducible LLM telemetry, pre-serialized in batches.
//!
//! Traffic has to look like production for the measurements to mean anything: a few heavy
//! users and applications (Zipf), a popular cheap model and a long tail of expensive ones,
//! log-normal token counts, latencies that grow with output length, prompt-cache hits, agent
//! runs that span several generations, a trickle of client retries (duplicate event ids) and
//! of broken events. Everything is drawn from one seeded `StdRng`, so a seed and a clock give
//! the same bytes every time, and a regression can be replayed.
//!
//! Events are written straight to JSON bytes (no `serde_json::Value` tree): the generator
//! must never be what limits throughput. Measured with the ignored test
//! `generator_throughput` (`cargo test -p tally-loadtest --release --lib -- --ignored
//! --nocapture generator_throughput`: generation plus `{"events":[...]}` framing, batches of
//! 1,000, default mix, about 550 bytes/event) on the project's 2-core Xeon while other builds
//! ran: 530,000-590,000 events/s (about 300 MB/s of JSON) on one core in release, about
//! 190,000 events/s in a debug build. Each run's report repeats the measurement as
//! `generator.events_per_busy_sec`, next to the rate actually sent.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};

use crate::settings::LoadtestArgs;

/// The mix of the workload; the defaults are those of the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadProfile {
    pub users: u32,
    pub zipf_exponent: f64,
    pub cache_hit_share: f64,
    pub agent_run_share: f64,
    pub error_share: f64,
    pub duplicate_share: f64,
    pub invalid_share: f64,
}

impl Default for WorkloadProfile {
    fn default() -> Self {
        Self {
            users: 10_000,
            zipf_exponent: 1.1,
            cache_hit_share: 0.3,
            agent_run_share: 0.2,
            error_share: 0.02,
            duplicate_share: 0.01,
            invalid_share: 0.001,
        }
    }
}

impl WorkloadProfile {
    pub fn from_args(args: &LoadtestArgs) -> Self {
        Self {
            users: args.users,
            zipf_exponent: args.zipf_exponent,
            cache_hit_share: args.cache_hit_share,
            agent_run_share: args.agent_run_share,
            error_share: args.error_share,
            duplicate_share: args.duplicate_share,
            invalid_share: args.invalid_share,
        }
    }
}

/// What an event of a batch is, so the runner can report what it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A fresh, valid generation.
    Generation,
    /// A valid agent run event (`running`, then `completed`/`failed`/`cancelled`).
    AgentRun,
    /// An exact re-send of an earlier generation (same event_id), like a client retry.
    Duplicate,
    /// An event the ingest service must reject.
    Invalid,
}

/// Serialized events, stored back to back in one buffer: cheap to build, to frame as a JSON
/// array or NDJSON, and to re-send in part when a 207 marks some events `failed`.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    kinds: Vec<EventKind>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The JSON of event `index`.
    pub fn event(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.bytes[start..self.ends[index]]
    }

    pub fn kind(&self, index: usize) -> EventKind {
        self.kinds[index]
    }

    pub fn count(&self, kind: EventKind) -> usize {
        self.kinds.iter().filter(|k| **k == kind).count()
    }

    /// Bytes of JSON over all events (before framing and compression).
    pub fn json_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The request body holding the events at `indices` (all when `None`): `{"events":[...]}`
    /// or NDJSON.
    pub fn body(&self, indices: Option<&[usize]>, ndjson: bool) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.bytes.len() + self.len() + 16);
        if !ndjson {
            body.extend_from_slice(b"{\"events\":[");
        }
        let mut write_event = |position: usize, index: usize| {
            if position > 0 {
                body.push(if ndjson { b'\n' } else { b',' });
            }
            body.extend_from_slice(self.event(index));
        };
        match indices {
            Some(indices) => indices.iter().enumerate().for_each(|(position, index)| write_event(position, *index)),
            None => (0..self.len()).for_each(|index| write_event(index, index)),
        }
        body.extend_from_slice(if ndjson { b"\n" } else { b"]}" });
        body
    }

    fn push(&mut self, kind: EventKind, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.bytes);
        self.ends.push(self.bytes.len());
        self.kinds.push(kind);
    }

    /// Moves the events from `at` on into a new batch.
    fn split_off(&mut self, at: usize) -> Batch {
        if at >= self.len() {
            return Batch::default();
        }
        let byte_start = if at == 0 { 0 } else { self.ends[at - 1] };
        let bytes = self.bytes.split_off(byte_start);
        let ends = self.ends.split_off(at).into_iter().map(|end| end - byte_start).collect();
        let kinds = self.kinds.split_off(at);
        Batch { bytes, ends, kinds }
    }
}

struct ModelProfile {
    provider: &'static str,
    model: &'static str,
    /// Typical time to first token before the prompt length is added.
    time_to_first_token_ms: f64,
    /// Decoding time per output token.
    ms_per_output_token: f64,
    /// Whether the model reports reasoning tokens.
    reasons: bool,
}

/// Models with a default price, most popular first (the Zipf rank).
const MODELS: [ModelProfile; 10] = [
    ModelProfile { provider: "openai", model: "gpt-4o-mini", time_to_first_token_ms: 250.0, ms_per_output_token: 8.0, reasons: false },
    ModelProfile { provider: "anthropic", model: "claude-sonnet-4-5", time_to_first_token_ms: 600.0, ms_per_output_token: 18.0, reasons: false },
    ModelProfile { provider: "openai", model: "gpt-4o", time_to_first_token_ms: 400.0, ms_per_output_token: 15.0, reasons: false },
    ModelProfile { provider: "google", model: "gemini-2.5-flash", time_to_first_token_ms: 300.0, ms_per_output_token: 5.0, reasons: true },
    ModelProfile { provider: "openai", model: "gpt-4.1-mini", time_to_first_token_ms: 300.0, ms_per_output_token: 9.0, reasons: false },
    ModelProfile { provider: "anthropic", model: "claude-haiku-4-5", time_to_first_token_ms: 350.0, ms_per_output_token: 7.0, reasons: false },
    ModelProfile { provider: "openai", model: "gpt-4.1", time_to_first_token_ms: 450.0, ms_per_output_token: 14.0, reasons: false },
    ModelProfile { provider: "openai", model: "o4-mini", time_to_first_token_ms: 800.0, ms_per_output_token: 10.0, reasons: true },
    ModelProfile { provider: "google", model: "gemini-2.5-pro", time_to_first_token_ms: 900.0, ms_per_output_token: 16.0, reasons: true },
    ModelProfile { provider: "anthropic", model: "claude-opus-4-1", time_to_first_token_ms: 1000.0, ms_per_output_token: 30.0, reasons: false },
];

/// Applications, most active first (the Zipf rank).
pub const APPLICATIONS: [&str; 20] = [
    "chat", "support-bot", "search", "summarizer", "code-assistant", "email-drafter", "sales-copilot", "doc-qa",
    "translator", "classifier", "extractor", "meeting-notes", "sql-helper", "onboarding", "moderation",
    "recommendations", "voice-agent", "research-agent", "billing-assistant", "hr-helpdesk",
];

const AGENT_NAMES: [&str; 5] = ["support-agent", "research-agent", "coding-agent", "triage-agent", "planner"];
const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
/// Error types with cumulative probabilities.
const ERROR_TYPES: [(&str, f64); 4] = [("rate_limit", 0.5), ("timeout", 0.7), ("server_error", 0.9), ("context_length_exceeded", 1.0)];

/// Agent runs open at the same time: runs interleave the way concurrent agents do.
const MAX_OPEN_RUNS: usize = 32;
/// Earlier generations kept for re-sending as duplicates.
const RECENT_CAPACITY: usize = 4_096;
/// Share of generations that carry a client-computed cost (exercises that path).
const CLIENT_COST_SHARE: f64 = 0.02;
/// Share of cache hits served by a semantic cache rather than a provider prompt cache.
const SEMANTIC_SHARE_OF_HITS: f64 = 0.1;
/// Share of non-hits that write the provider prompt cache (cache_status "miss").
const CACHE_WRITE_SHARE_OF_MISSES: f64 = 0.4;

/// The ways an invalid event is broken; each must be rejected by the ingest validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Corruption {
    NegativeInputTokens,
    CachedTokensExceedInput,
    ReasoningExceedsOutput,
    MissingModel,
    EventIdNotUuid,
    StartTimeInSeconds,
}

const CORRUPTIONS: [Corruption; 6] = [
    Corruption::NegativeInputTokens,
    Corruption::CachedTokensExceedInput,
    Corruption::ReasoningExceedsOutput,
    Corruption::MissingModel,
    Corruption::EventIdNotUuid,
    Corruption::StartTimeInSeconds,
];

/// Who is calling and on behalf of what: shared by the generations of one agent run.
#[derive(Debug, Clone, Copy)]
struct CallContext {
    user: u32,
    application: usize,
    environment: &'static str,
    session: u8,
    trace_id: u64,
    run_id: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct OpenRun {
    context: CallContext,
    name: &'static str,
    start_time_ms: i64,
    generations_left: u8,
}

/// One drawn generation, before it is written out.
struct GenerationDraw {
    event_id: [u8; 16],
    span_id: u64,
    context: CallContext,
    model: &'static ModelProfile,
    start_time_ms: i64,
    duration_tenths_ms: u64,
    time_to_first_token_ms: u64,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_input_tokens: i64,
    cache_creation_input_tokens: i64,
    reasoning_tokens: i64,
    client_cost_micro_usd: Option<u64>,
    error_type: Option<&'static str>,
    cache_status: &'static str,
    cache_similarity_thousandths: Option<u32>,
    region: &'static str,
    prompt_version: u8,
}

/// A seeded, stateful source of event batches.
pub struct Generator {
    rng: StdRng,
    profile: WorkloadProfile,
    users: Zipf<f64>,
    applications: Zipf<f64>,
    models: Zipf<f64>,
    input_tokens: LogNormal<f64>,
    output_tokens: LogNormal<f64>,
    /// Multiplicative latency noise around the model's typical speed.
    latency_noise: LogNormal<f64>,
    open_runs: Vec<OpenRun>,
    recent_generations: Vec<Vec<u8>>,
    next_recent_slot: usize,
    /// Events drawn beyond the last batch's size (a step can emit up to three).
    carried_over: Batch,
}

impl Generator {
    pub fn new(seed: u64, profile: WorkloadProfile) -> Self {
        let exponent = profile.zipf_exponent;
        let zipf = |n: usize| Zipf::new(n as f64, exponent).expect("n >= 1 and a positive exponent (validated)");
        Self {
            rng: StdRng::seed_from_u64(seed),
            users: zipf(profile.users.max(1) as usize),
            applications: zipf(APPLICATIONS.len()),
            models: zipf(MODELS.len()),
            // Medians of 1,500 input and 250 output tokens, clamped to 200..20k and 50..2k.
            input_tokens: LogNormal::new(1_500f64.ln(), 0.9).expect("valid log-normal"),
            output_tokens: LogNormal::new(250f64.ln(), 0.8).expect("valid log-normal"),
            latency_noise: LogNormal::new(0.0, 0.25).expect("valid log-normal"),
            profile,
            open_runs: Vec::with_capacity(MAX_OPEN_RUNS),
            recent_generations: Vec::with_capacity(RECENT_CAPACITY),
            next_recent_slot: 0,
            carried_over: Batch::default(),
        }
    }

    /// The next `size` events, timestamped as if the calls finished at `now_ms` (epoch ms).
    pub fn next_batch(&mut self, size: usize, now_ms: i64) -> Batch {
        let mut batch = std::mem::take(&mut self.carried_over);
        while batch.len() < size {
            self.step(&mut batch, now_ms);
        }
        self.carried_over = batch.split_off(size);
        batch
    }

    /// Draws one generation (valid, duplicate or invalid) and the agent run events it opens
    /// or closes.
    fn step(&mut self, batch: &mut Batch, now_ms: i64) {
        let roll: f64 = self.rng.random();
        if roll < self.profile.invalid_share {
            let corruption = CORRUPTIONS[self.rng.random_range(0..CORRUPTIONS.len())];
            let context = self.standalone_context();
            let draw = self.draw_generation(context, now_ms);
            batch.push(EventKind::Invalid, |out| write_generation(out, &draw, Some(corruption)));
            return;
        }
        if roll < self.profile.invalid_share + self.profile.duplicate_share && !self.recent_generations.is_empty() {
            let earlier = &self.recent_generations[self.rng.random_range(0..self.recent_generations.len())];
            batch.push(EventKind::Duplicate, |out| out.extend_from_slice(earlier));
            return;
        }
        if self.rng.random_bool(self.profile.agent_run_share) {
            self.step_agent_run(batch, now_ms);
        } else {
            let context = self.standalone_context();
            self.push_generation(batch, context, now_ms);
        }
    }

    /// A generation inside an agent run: opens a run while fewer than [`MAX_OPEN_RUNS`] are
    /// open, otherwise continues a random open one, and closes the run after its last call.
    fn step_agent_run(&mut self, batch: &mut Batch, now_ms: i64) {
        let slot = if self.open_runs.len() < MAX_OPEN_RUNS {
            let mut context = self.standalone_context();
            context.run_id = Some(self.rng.random());
            let run = OpenRun {
                context,
                name: AGENT_NAMES[self.rng.random_range(0..AGENT_NAMES.len())],
                start_time_ms: now_ms - self.rng.random_range(1_000..30_000),
                generations_left: self.rng.random_range(3..=8),
            };
            let event_id: [u8; 16] = self.rng.random();
            batch.push(EventKind::AgentRun, |out| write_agent_run(out, &event_id, &run, "running", None));
            self.open_runs.push(run);
            self.open_runs.len() - 1
        } else {
            self.rng.random_range(0..self.open_runs.len())
        };
        let context = self.open_runs[slot].context;
        self.push_generation(batch, context, now_ms);
        let run = &mut self.open_runs[slot];
        run.generations_left -= 1;
        if run.generations_left == 0 {
            let run = self.open_runs.swap_remove(slot);
            let outcome: f64 = self.rng.random();
            let status = if outcome < 0.85 {
                "completed"
            } else if outcome < 0.95 {
                "failed"
            } else {
                "cancelled"
            };
            let event_id: [u8; 16] = self.rng.random();
            let end_time_ms = now_ms.max(run.start_time_ms);
            batch.push(EventKind::AgentRun, |out| write_agent_run(out, &event_id, &run, status, Some(end_time_ms)));
        }
    }

    fn push_generation(&mut self, batch: &mut Batch, context: CallContext, now_ms: i64) {
        let draw = self.draw_generation(context, now_ms);
        batch.push(EventKind::Generation, |out| write_generation(out, &draw, None));
        let written = batch.event(batch.len() - 1);
        if self.recent_generations.len() < RECENT_CAPACITY {
            self.recent_generations.push(written.to_vec());
        } else {
            let slot = &mut self.recent_generations[self.next_recent_slot];
            slot.clear();
            slot.extend_from_slice(written);
            self.next_recent_slot = (self.next_recent_slot + 1) % RECENT_CAPACITY;
        }
    }

    fn standalone_context(&mut self) -> CallContext {
        let environment_roll: f64 = self.rng.random();
        CallContext {
            user: self.users.sample(&mut self.rng) as u32,
            application: self.applications.sample(&mut self.rng) as usize - 1,
            environment: if environment_roll < 0.8 {
                "prod"
            } else if environment_roll < 0.95 {
                "staging"
            } else {
                "dev"
            },
            session: self.rng.random_range(0..4),
            trace_id: self.rng.random(),
            run_id: None,
        }
    }

    fn draw_generation(&mut self, context: CallContext, now_ms: i64) -> GenerationDraw {
        let rng = &mut self.rng;
        let model = &MODELS[self.models.sample(rng) as usize - 1];
        let input_tokens = self.input_tokens.sample(rng).clamp(200.0, 20_000.0) as i64;
        let mut output_tokens = self.output_tokens.sample(rng).clamp(50.0, 2_000.0) as i64;

        let (mut cache_status, mut cache_read, mut cache_creation, mut similarity) = ("none", 0, 0, None);
        let semantic_hit = if rng.random_bool(self.profile.cache_hit_share) {
            if rng.random_bool(SEMANTIC_SHARE_OF_HITS) {
                // The whole prompt matched a cached answer: no provider call.
                (cache_status, cache_read, similarity) = ("semantic_hit", input_tokens, Some(rng.random_range(900..=999)));
                true
            } else {
                cache_status = "hit";
                cache_read = (input_tokens as f64 * rng.random_range(0.5..0.95)) as i64;
                false
            }
        } else {
            if rng.random_bool(CACHE_WRITE_SHARE_OF_MISSES) {
                cache_status = "miss";
                cache_creation = (input_tokens as f64 * rng.random_range(0.2..0.6)) as i64;
            }
            false
        };

        let error_type = if rng.random_bool(self.profile.error_share) {
            let roll: f64 = rng.random();
            ERROR_TYPES.iter().find(|(_, cumulative)| roll < *cumulative).map(|(name, _)| *name)
        } else {
            None
        };

        // Prefill grows with the uncached prompt; decoding with the output length.
        let uncached_input = (input_tokens - cache_read) as f64;
        let mut time_to_first_token = (model.time_to_first_token_ms + uncached_input * 0.02) * self.latency_noise.sample(rng);
        let mut duration = time_to_first_token + output_tokens as f64 * model.ms_per_output_token * self.latency_noise.sample(rng);
        if semantic_hit {
            time_to_first_token = rng.random_range(10.0..60.0);
            duration = time_to_first_token + rng.random_range(5.0..30.0);
        }
        match error_type {
            Some("timeout") => {
                output_tokens = 0;
                duration = rng.random_range(30_000.0..60_000.0);
                time_to_first_token = duration;
            }
            Some(_) => {
                output_tokens = 0;
                duration = rng.random_range(50.0..400.0);
                time_to_first_token = duration;
            }
            None => {}
        }
        let reasoning_tokens =
            if model.reasons && output_tokens > 0 { (output_tokens as f64 * rng.random_range(0.2..0.7)) as i64 } else { 0 };
        let duration_tenths_ms = (duration * 10.0).round() as u64;

        GenerationDraw {
            event_id: rng.random(),
            span_id: rng.random(),
            context,
            model,
            start_time_ms: now_ms - (duration_tenths_ms / 10) as i64,
            duration_tenths_ms,
            time_to_first_token_ms: time_to_first_token.round() as u64,
            input_tokens,
            output_tokens,
            cache_read_input_tokens: cache_read,
            cache_creation_input_tokens: cache_creation,
            reasoning_tokens,
            client_cost_micro_usd: rng.random_bool(CLIENT_COST_SHARE).then(|| rng.random_range(1..50_000)),
            error_type,
            cache_status,
            cache_similarity_thousandths: similarity,
            region: REGIONS[rng.random_range(0..REGIONS.len())],
            prompt_version: rng.random_range(1..=5),
        }
    }
}

/// A single valid generation whose `application` is unique to it: the end-to-end probe looks
/// for it in the rollups.
pub fn probe_generation(application: &str, event_id: uuid::Uuid, now_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut id = [0u8; 36];
    let id = event_id.hyphenated().encode_lower(&mut id);
    // `application` comes from the runner (letters, digits and dashes): no escaping needed.
    let _ = write!(
        out,
        "{{\"type\":\"generation\",\"event_id\":\"{id}\",\"trace_id\":\"t-{application}\",\"application\":\"{application}\",\
         \"environment\":\"loadtest\",\"user_id\":\"loadtest-probe\",\"provider\":\"openai\",\"model\":\"gpt-4o-mini\",\
         \"start_time\":{now_ms},\"duration_ms\":1,\"input_tokens\":100,\"output_tokens\":10,\"cache_read_input_tokens\":0,\
         \"cache_creation_input_tokens\":0,\"reasoning_tokens\":0,\"status\":\"ok\"}}"
    );
    out
}

fn write_uuid(out: &mut Vec<u8>, random_bytes: &[u8; 16]) {
    let mut text = [0u8; 36];
    let id = uuid::Builder::from_random_bytes(*random_bytes).into_uuid();
    out.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
}

// Writing to a Vec cannot fail, so the io::Result of `write!` is ignored throughout.
fn write_generation(out: &mut Vec<u8>, draw: &GenerationDraw, corruption: Option<Corruption>) {
    let context = &draw.context;
    out.extend_from_slice(b"{\"type\":\"generation\",\"event_id\":\"");
    if corruption == Some(Corruption::EventIdNotUuid) {
        let _ = write!(out, "not-a-uuid-{:016x}", draw.span_id);
    } else {
        write_uuid(out, &draw.event_id);
    }
    let _ = write!(out, "\",\"trace_id\":\"t-{:016x}\",\"span_id\":\"s-{:016x}\"", context.trace_id, draw.span_id);
    if let Some(run_id) = context.run_id {
        let _ = write!(out, ",\"agent_run_id\":\"run-{run_id:016x}\"");
    }
    let _ = write!(
        out,
        ",\"application\":\"{}\",\"environment\":\"{}\",\"user_id\":\"u-{}\",\"session_id\":\"sess-{}-{}\",\"provider\":\"{}\"",
        APPLICATIONS[context.application], context.environment, context.user, context.user, context.session, draw.model.provider
    );
    if corruption != Some(Corruption::MissingModel) {
        let _ = write!(out, ",\"model\":\"{}\"", draw.model.model);
    }
    let start_time = if corruption == Some(Corruption::StartTimeInSeconds) { draw.start_time_ms / 1000 } else { draw.start_time_ms };
    let (mut input, mut cache_read, mut reasoning) = (draw.input_tokens, draw.cache_read_input_tokens, draw.reasoning_tokens);
    match corruption {
        Some(Corruption::NegativeInputTokens) => input = -input,
        Some(Corruption::CachedTokensExceedInput) => cache_read = input + 1 + cache_read % 100,
        Some(Corruption::ReasoningExceedsOutput) => reasoning = draw.output_tokens + 1,
        _ => {}
    }
    let _ = write!(
        out,
        ",\"start_time\":{start_time},\"duration_ms\":{}.{},\"time_to_first_token_ms\":{},\"input_tokens\":{input},\
         \"output_tokens\":{},\"cache_read_input_tokens\":{cache_read},\"cache_creation_input_tokens\":{},\"reasoning_tokens\":{reasoning}",
        draw.duration_tenths_ms / 10,
        draw.duration_tenths_ms % 10,
        draw.time_to_first_token_ms,
        draw.output_tokens,
        draw.cache_creation_input_tokens,
    );
    if let Some(micro_usd) = draw.client_cost_micro_usd {
        let _ = write!(out, ",\"cost\":\"{}.{:06}\"", micro_usd / 1_000_000, micro_usd % 1_000_000);
    }
    match draw.error_type {
        Some(error_type) => {
            let _ = write!(out, ",\"status\":\"error\",\"error_type\":\"{error_type}\"");
        }
        None => out.extend_from_slice(b",\"status\":\"ok\""),
    }
    let _ = write!(out, ",\"cache_status\":\"{}\"", draw.cache_status);
    if let Some(thousandths) = draw.cache_similarity_thousandths {
        let _ = write!(out, ",\"cache_similarity\":0.{thousandths:03}");
    }
    let _ = write!(out, ",\"metadata\":{{\"region\":\"{}\",\"prompt_version\":\"v{}\"}}}}", draw.region, draw.prompt_version);
}

fn write_agent_run(out: &mut Vec<u8>, event_id: &[u8; 16], run: &OpenRun, status: &str, end_time_ms: Option<i64>) {
    let context = &run.context;
    out.extend_from_slice(b"{\"type\":\"agent_run\",\"event_id\":\"");
    write_uuid(out, event_id);
    let _ = write!(
        out,
        "\",\"run_id\":\"run-{:016x}\",\"user_id\":\"u-{}\",\"thread_id\":\"sess-{}-{}\",\"name\":\"{}\",\"status\":\"{status}\",\"start_time\":{}",
        context.run_id.unwrap_or_default(),
        context.user,
        context.user,
        context.session,
        run.name,
        run.start_time_ms
    );
    if let Some(end_time_ms) = end_time_ms {
        let _ = write!(out, ",\"end_time\":{end_time_ms}");
    }
    let _ = write!(out, ",\"metadata\":{{\"application\":\"{}\"}}}}", APPLICATIONS[context.application]);
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::Value;

    use super::*;

    const NOW_MS: i64 = 1_767_225_600_000;

    fn events(seed: u64, profile: WorkloadProfile, count: usize) -> Vec<(EventKind, Value)> {
        let mut generator = Generator::new(seed, profile);
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let batch = generator.next_batch(1000, NOW_MS);
            assert_eq!(batch.len(), 1000);
            for index in 0..batch.len() {
                let value: Value = serde_json::from_slice(batch.event(index)).expect("every event is JSON");
                events.push((batch.kind(index), value));
            }
        }
        events
    }

    fn number(event: &Value, field: &str) -> i64 {
        event[field].as_i64().unwrap_or_else(|| panic!("{field} in {event}"))
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let batches = |seed| {
            let mut generator = Generator::new(seed, WorkloadProfile::default());
            (0..5).map(|i| generator.next_batch(777, NOW_MS + i).body(None, false)).collect::<Vec<_>>()
        };
        assert_eq!(batches(7), batches(7));
        assert_ne!(batches(7), batches(8));
    }

    #[test]
    fn valid_generations_respect_the_token_rules() {
        let known_models: HashSet<&str> = MODELS.iter().map(|m| m.model).collect();
        let mut cache_hits = 0;
        let mut generations = 0;
        for (kind, event) in events(1, WorkloadProfile::default(), 50_000) {
            if kind != EventKind::Generation {
                continue;
            }
            generations += 1;
            let input = number(&event, "input_tokens");
            let output = number(&event, "output_tokens");
            let cached = number(&event, "cache_read_input_tokens") + number(&event, "cache_creation_input_tokens");
            assert!((200..=20_000).contains(&input), "{event}");
            assert!(output <= 2_000, "{event}");
            assert!(cached <= input, "cached tokens exceed input: {event}");
            assert!(number(&event, "reasoning_tokens") <= output, "{event}");
            assert!(known_models.contains(event["model"].as_str().unwrap()), "{event}");
            uuid::Uuid::parse_str(event["event_id"].as_str().unwrap()).expect("event_id is a UUID");
            let duration = event["duration_ms"].as_f64().unwrap();
            assert!(duration >= 0.0 && number(&event, "time_to_first_token_ms") as f64 <= duration + 1.0, "{event}");
            assert!(number(&event, "start_time") <= NOW_MS);
            if matches!(event["cache_status"].as_str(), Some("hit" | "semantic_hit")) {
                cache_hits += 1;
                assert!(number(&event, "cache_read_input_tokens") > 0);
            }
        }
        let hit_share = f64::from(cache_hits) / f64::from(generations);
        assert!((0.27..0.33).contains(&hit_share), "cache hit share {hit_share}");
    }

    #[test]
    fn latency_grows_with_output_tokens() {
        let (mut short, mut long) = (Vec::new(), Vec::new());
        for (kind, event) in events(2, WorkloadProfile { cache_hit_share: 0.0, error_share: 0.0, ..Default::default() }, 20_000) {
            if kind == EventKind::Generation && event["model"] == "gpt-4o-mini" {
                let output = number(&event, "output_tokens");
                let duration = event["duration_ms"].as_f64().unwrap();
                if output < 150 {
                    short.push(duration);
                } else if output > 600 {
                    long.push(duration);
                }
            }
        }
        let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
        assert!(mean(&long) > 2.0 * mean(&short), "long {} short {}", mean(&long), mean(&short));
    }

    #[test]
    fn duplicate_and_invalid_shares_are_honoured() {
        let profile = WorkloadProfile { duplicate_share: 0.05, invalid_share: 0.02, ..Default::default() };
        let events = events(3, profile, 100_000);
        let count = |kind| events.iter().filter(|(k, _)| *k == kind).count() as f64 / events.len() as f64;
        // Shares are of drawn generations; agent run events add about 7% more events.
        assert!((0.04..0.055).contains(&count(EventKind::Duplicate)), "duplicates {}", count(EventKind::Duplicate));
        assert!((0.015..0.022).contains(&count(EventKind::Invalid)), "invalid {}", count(EventKind::Invalid));

        let mut seen = HashSet::new();
        for (kind, event) in &events {
            let id = event["event_id"].as_str().unwrap_or_default();
            match kind {
                EventKind::Duplicate => assert!(seen.contains(id), "a duplicate re-sends an earlier event_id"),
                EventKind::Generation | EventKind::AgentRun => assert!(seen.insert(id.to_string()), "fresh ids are unique"),
                EventKind::Invalid => {}
            }
        }
    }

    #[test]
    fn invalid_events_break_a_validation_rule() {
        let profile = WorkloadProfile { invalid_share: 1.0, ..Default::default() };
        for (kind, event) in events(4, profile, 1_000) {
            assert_eq!(kind, EventKind::Invalid);
            let input = event["input_tokens"].as_i64().unwrap();
            let broken = input < 0
                || number(&event, "cache_read_input_tokens") + number(&event, "cache_creation_input_tokens") > input
                || number(&event, "reasoning_tokens") > number(&event, "output_tokens")
                || event.get("model").is_none()
                || uuid::Uuid::parse_str(event["event_id"].as_str().unwrap()).is_err()
                || number(&event, "start_time") < 946_684_800_000;
            assert!(broken, "not invalid: {event}");
        }
    }

    #[test]
    fn agent_runs_open_and_close_around_their_generations() {
        let mut generations_per_run: HashMap<String, usize> = HashMap::new();
        let mut statuses: HashMap<String, Vec<String>> = HashMap::new();
        for (kind, event) in events(5, WorkloadProfile::default(), 50_000) {
            match kind {
                EventKind::AgentRun => statuses
                    .entry(event["run_id"].as_str().unwrap().to_string())
                    .or_default()
                    .push(event["status"].as_str().unwrap().to_string()),
                EventKind::Generation => {
                    if let Some(run) = event["agent_run_id"].as_str() {
                        assert_eq!(statuses[run], ["running"], "generations come between running and the end");
                        *generations_per_run.entry(run.to_string()).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
        let finished: Vec<_> = statuses.iter().filter(|(_, s)| s.len() == 2).collect();
        assert!(finished.len() > 500);
        for (run, statuses) in finished {
            assert!(matches!(statuses[1].as_str(), "completed" | "failed" | "cancelled"));
            assert!((3..=8).contains(&generations_per_run[run]), "{run}: {}", generations_per_run[run]);
        }
    }

    #[test]
    fn users_are_zipf_skewed() {
        let mut per_user: HashMap<String, usize> = HashMap::new();
        for (kind, event) in events(6, WorkloadProfile::default(), 100_000) {
            if kind == EventKind::Generation {
                *per_user.entry(event["user_id"].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
        let mut counts: Vec<usize> = per_user.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let (top, median) = (counts[0], counts[counts.len() / 2]);
        assert!(top > 50 * median, "top user {top}, median {median}");
        assert_eq!(per_user.get("u-1").copied(), Some(top), "rank 1 is the heaviest user");
    }

    #[test]
    fn bodies_frame_all_or_some_events() {
        let mut generator = Generator::new(9, WorkloadProfile::default());
        let batch = generator.next_batch(10, NOW_MS);
        let body: Value = serde_json::from_slice(&batch.body(None, false)).unwrap();
        assert_eq!(body["events"].as_array().unwrap().len(), 10);
        let some: Value = serde_json::from_slice(&batch.body(Some(&[2, 7]), false)).unwrap();
        assert_eq!(some["events"][1], serde_json::from_slice::<Value>(batch.event(7)).unwrap());
        let ndjson = batch.body(Some(&[0, 1, 2]), true);
        assert_eq!(ndjson.split(|b| *b == b'\n').filter(|line| !line.is_empty()).count(), 3);
        let probe: Value = serde_json::from_slice(&probe_generation("lt-probe-x-1", uuid::Uuid::nil(), NOW_MS)).unwrap();
        assert_eq!(probe["application"], "lt-probe-x-1");
    }

    /// Not a correctness test: prints the generator's own speed (run it in release).
    #[test]
    #[ignore]
    fn generator_throughput() {
        let mut generator = Generator::new(42, WorkloadProfile::default());
        let started = std::time::Instant::now();
        let (mut events, mut bytes) = (0usize, 0usize);
        while started.elapsed() < std::time::Duration::from_secs(3) {
            let batch = generator.next_batch(1000, NOW_MS);
            let body = batch.body(None, false);
            events += batch.len();
            bytes += body.len();
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "generator: {:.0} events/s, {:.0} MB/s of JSON, {} bytes/event",
            events as f64 / seconds,
            bytes as f64 / seconds / 1e6,
            bytes / events
        );
    }
}

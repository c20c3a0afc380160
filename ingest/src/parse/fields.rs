//! The event keys this module reads (`Key`: canonical names and aliases), which names make up
//! one field (`Names`: canonical first), and the slots an event's values are read into
//! (`FieldValue`, `Fields`, which also records the keys that are not `Key`s). For an unknown
//! key, [`Key::closest`] finds the known one it most likely misspells.

use std::borrow::Cow;
use std::sync::OnceLock;

use serde_json::Number;

macro_rules! known_keys {
    ($($key:ident = $name:literal,)*) => {
        /// The event keys this module reads, canonical names and aliases alike.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Key {
            $($key,)*
        }

        impl Key {
            const ALL: [Key; Self::COUNT] = [$(Key::$key,)*];
            pub(super) const COUNT: usize = [$(Key::$key,)*].len();

            pub(super) fn name(self) -> &'static str {
                match self {
                    $(Key::$key => $name,)*
                }
            }

            pub(super) fn from_name(name: &str) -> Option<Key> {
                match name {
                    $($name => Some(Key::$key),)*
                    _ => None,
                }
            }
        }
    };
}

known_keys! {
    Type = "type",
    EventId = "event_id",
    TraceId = "trace_id",
    SpanId = "span_id",
    ParentSpanId = "parent_span_id",
    AgentRunId = "agent_run_id",
    RunId = "run_id",
    Application = "application",
    Environment = "environment",
    UserId = "user_id",
    OtelUserId = "user.id",
    SessionId = "session_id",
    OtelConversationId = "gen_ai.conversation.id",
    ThreadId = "thread_id",
    Name = "name",
    Provider = "provider",
    OtelProviderName = "gen_ai.provider.name",
    OtelSystem = "gen_ai.system",
    Model = "model",
    OtelRequestModel = "gen_ai.request.model",
    OtelResponseModel = "gen_ai.response.model",
    StartTime = "start_time",
    Timestamp = "timestamp",
    EndTime = "end_time",
    DurationMs = "duration_ms",
    LatencyMs = "latency_ms",
    TimeToFirstTokenMs = "time_to_first_token_ms",
    InputTokens = "input_tokens",
    OtelInputTokens = "gen_ai.usage.input_tokens",
    PromptTokens = "prompt_tokens",
    OutputTokens = "output_tokens",
    OtelOutputTokens = "gen_ai.usage.output_tokens",
    CompletionTokens = "completion_tokens",
    CacheReadInputTokens = "cache_read_input_tokens",
    OtelCacheReadInputTokens = "gen_ai.usage.cache_read.input_tokens",
    OtelCacheReadInputTokensFlat = "gen_ai.usage.cache_read_input_tokens",
    CacheCreationInputTokens = "cache_creation_input_tokens",
    OtelCacheCreationInputTokens = "gen_ai.usage.cache_creation.input_tokens",
    OtelCacheCreationInputTokensFlat = "gen_ai.usage.cache_creation_input_tokens",
    ReasoningTokens = "reasoning_tokens",
    OtelReasoningTokens = "gen_ai.usage.reasoning.output_tokens",
    OtelReasoningTokensFlat = "gen_ai.usage.reasoning_tokens",
    Cost = "cost",
    CostUsd = "cost_usd",
    Status = "status",
    ErrorType = "error_type",
    OtelErrorType = "error.type",
    CacheStatus = "cache_status",
    CacheSimilarity = "cache_similarity",
    Metadata = "metadata",
}

impl Key {
    /// The known key that the unknown `name` most likely misspells: one that differs only in
    /// case and separators (`outputTokens`, `Input-Tokens`), else the nearest by edit distance
    /// (Levenshtein, hand-written below) on those normalised names, within 1 edit for names of
    /// up to 4 characters, 2 up to 12 and 3 beyond. Ties go to the earlier key, so a canonical
    /// name before its aliases.
    pub(super) fn closest(name: &str) -> Option<Key> {
        let wanted = normalized(name);
        if wanted.is_empty() {
            return None;
        }
        let max = match wanted.len() {
            0..=4 => 1,
            5..=12 => 2,
            _ => 3,
        };
        let mut best: Option<(usize, Key)> = None;
        for (key, known) in normalized_keys() {
            let limit = best.map_or(max, |(distance, _)| distance.saturating_sub(1));
            if let Some(distance) = distance_within(&wanted, known, limit) {
                best = Some((distance, *key));
                if distance == 0 {
                    break;
                }
            }
        }
        best.map(|(_, key)| key)
    }
}

/// A key name compared without case and without `_`, `.`, `-` and spaces.
fn normalized(name: &str) -> Vec<u8> {
    name.bytes().filter(|byte| !matches!(byte, b'_' | b'.' | b'-' | b' ')).map(|byte| byte.to_ascii_lowercase()).collect()
}

/// [`normalized`] of every key, in [`Key`] order; computed once.
fn normalized_keys() -> &'static [(Key, Vec<u8>)] {
    static KEYS: OnceLock<Vec<(Key, Vec<u8>)>> = OnceLock::new();
    KEYS.get_or_init(|| Key::ALL.iter().map(|&key| (key, normalized(key.name()))).collect())
}

/// The Levenshtein distance of `a` and `b` (in bytes, each at most 64 long: longer ones are
/// cut) when it is at most `max`.
fn distance_within(a: &[u8], b: &[u8], max: usize) -> Option<usize> {
    const LONGEST: usize = MAX_UNKNOWN_KEY_BYTES;
    let (a, b) = (&a[..a.len().min(LONGEST)], &b[..b.len().min(LONGEST)]);
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    // Two rows of the edit-distance table, on the stack: no allocation per comparison.
    let mut previous = [0usize; LONGEST + 1];
    let mut current = [0usize; LONGEST + 1];
    for (j, cell) in previous.iter_mut().enumerate().take(b.len() + 1) {
        *cell = j;
    }
    for (i, &left) in a.iter().enumerate() {
        current[0] = i + 1;
        let mut row_min = current[0];
        for (j, &right) in b.iter().enumerate() {
            current[j + 1] = (previous[j] + usize::from(left != right)).min(previous[j + 1] + 1).min(current[j] + 1);
            row_min = row_min.min(current[j + 1]);
        }
        // Distances never shrink from one row to the next: stop once every cell is over.
        if row_min > max {
            return None;
        }
        std::mem::swap(&mut previous, &mut current);
    }
    Some(previous[b.len()]).filter(|&distance| distance <= max)
}

/// One field's names, canonical first: the first present and not null wins.
pub(super) type Names = &'static [Key];

pub(super) const START_TIME: Names = &[Key::StartTime, Key::Timestamp];
pub(super) const DURATION: Names = &[Key::DurationMs, Key::LatencyMs];
pub(super) const INPUT_TOKENS: Names = &[Key::InputTokens, Key::OtelInputTokens, Key::PromptTokens];
pub(super) const OUTPUT_TOKENS: Names = &[Key::OutputTokens, Key::OtelOutputTokens, Key::CompletionTokens];
pub(super) const CACHE_READ_INPUT_TOKENS: Names =
    &[Key::CacheReadInputTokens, Key::OtelCacheReadInputTokens, Key::OtelCacheReadInputTokensFlat];
pub(super) const CACHE_CREATION_INPUT_TOKENS: Names =
    &[Key::CacheCreationInputTokens, Key::OtelCacheCreationInputTokens, Key::OtelCacheCreationInputTokensFlat];
pub(super) const REASONING_TOKENS: Names = &[Key::ReasoningTokens, Key::OtelReasoningTokens, Key::OtelReasoningTokensFlat];
pub(super) const ERROR_TYPE: Names = &[Key::ErrorType, Key::OtelErrorType];
pub(super) const AGENT_RUN_ID: Names = &[Key::AgentRunId, Key::RunId];
pub(super) const USER_ID: Names = &[Key::UserId, Key::OtelUserId];
pub(super) const SESSION_ID: Names = &[Key::SessionId, Key::OtelConversationId];
pub(super) const PROVIDER: Names = &[Key::Provider, Key::OtelProviderName, Key::OtelSystem];
pub(super) const MODEL: Names = &[Key::Model, Key::OtelRequestModel, Key::OtelResponseModel];
pub(super) const COST: Names = &[Key::Cost, Key::CostUsd];
pub(super) const THREAD_ID: Names = &[Key::ThreadId, Key::SessionId];

/// The value of one key as read, borrowing its text from the body where it can.
#[derive(Debug)]
pub(super) enum FieldValue<'de> {
    /// Absent or `null`.
    Absent,
    Bool(bool),
    Number(Number),
    Str(Cow<'de, str>),
    /// An array; its contents were checked and skipped.
    Array,
    /// An object; its contents were checked and skipped.
    Object,
    /// The entries of the `metadata` object as a map holds them: in key order, a later
    /// duplicate key replacing an earlier one. Values are never `Metadata`.
    Metadata(Vec<(Cow<'de, str>, FieldValue<'de>)>),
}

impl FieldValue<'_> {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(text) => Some(text),
            _ => None,
        }
    }

    pub(super) fn as_number(&self) -> Option<&Number> {
        match self {
            FieldValue::Number(number) => Some(number),
            _ => None,
        }
    }
}

/// Most unknown keys recorded per event; further ones are only counted.
pub(super) const MAX_UNKNOWN_KEYS: usize = 16;
/// Unknown key names are recorded cut to this many bytes (at a character boundary).
pub(super) const MAX_UNKNOWN_KEY_BYTES: usize = 64;

/// One slot per [`Key`] for the event being read; reused from event to event.
pub(super) struct Fields<'de> {
    values: [FieldValue<'de>; Key::COUNT],
    /// Bit `key` is set when that slot may hold something: clearing touches only those slots.
    written: u64,
    /// The event's keys that are not [`Key`]s: in body order, without repeats, cut to
    /// [`MAX_UNKNOWN_KEY_BYTES`], at most [`MAX_UNKNOWN_KEYS`]. Borrowed from the body unless
    /// the key holds escapes.
    unknown: Vec<Cow<'de, str>>,
    /// Unknown keys past the first [`MAX_UNKNOWN_KEYS`] (repeats included).
    unknown_not_recorded: usize,
}

impl<'de> Fields<'de> {
    const FITS_THE_MASK: () = assert!(Key::COUNT <= u64::BITS as usize);

    pub(super) fn new() -> Self {
        let () = Self::FITS_THE_MASK;
        Self { values: [const { FieldValue::Absent }; Key::COUNT], written: 0, unknown: Vec::new(), unknown_not_recorded: 0 }
    }

    /// Records an unknown key whose name borrows from the body.
    pub(super) fn unknown_borrowed(&mut self, name: &'de str) {
        if let Some(name) = self.recordable(name) {
            self.unknown.push(Cow::Borrowed(name));
        }
    }

    /// Records an unknown key whose name was unescaped into a temporary buffer.
    pub(super) fn unknown_copied(&mut self, name: &str) {
        if let Some(name) = self.recordable(name) {
            self.unknown.push(Cow::Owned(name.to_owned()));
        }
    }

    /// `name` cut to size, if it is to be recorded: not yet seen, and there is room.
    fn recordable<'n>(&mut self, name: &'n str) -> Option<&'n str> {
        let mut end = name.len().min(MAX_UNKNOWN_KEY_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let name = &name[..end];
        if self.unknown.iter().any(|seen| seen == name) {
            return None;
        }
        if self.unknown.len() == MAX_UNKNOWN_KEYS {
            self.unknown_not_recorded += 1;
            return None;
        }
        Some(name)
    }

    /// The recorded unknown keys, and how many more there were.
    pub(super) fn unknown(&self) -> (&[Cow<'de, str>], usize) {
        (&self.unknown, self.unknown_not_recorded)
    }

    pub(super) fn set(&mut self, key: Key, value: FieldValue<'de>) {
        self.values[key as usize] = value;
        self.written |= 1 << key as u32;
    }

    pub(super) fn clear(&mut self) {
        while self.written != 0 {
            let slot = self.written.trailing_zeros();
            self.values[slot as usize] = FieldValue::Absent;
            self.written &= self.written - 1;
        }
        if !self.unknown.is_empty() {
            self.unknown.clear();
            self.unknown_not_recorded = 0;
        }
    }

    pub(super) fn get(&self, key: Key) -> &FieldValue<'de> {
        &self.values[key as usize]
    }
}

//! The event keys this module reads (`Key`: canonical names and aliases), which names make up
//! one field (`Names`: canonical first), and the slots an event's values are read into
//! (`FieldValue`, `Fields`).

use std::borrow::Cow;

use serde_json::Number;

macro_rules! known_keys {
    ($($key:ident = $name:literal,)*) => {
        /// The event keys this module reads, canonical names and aliases alike.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Key {
            $($key,)*
        }

        impl Key {
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

/// One slot per [`Key`] for the event being read; reused from event to event.
pub(super) struct Fields<'de> {
    values: [FieldValue<'de>; Key::COUNT],
    /// Bit `key` is set when that slot may hold something: clearing touches only those slots.
    written: u64,
}

impl<'de> Fields<'de> {
    const FITS_THE_MASK: () = assert!(Key::COUNT <= u64::BITS as usize);

    pub(super) fn new() -> Self {
        let () = Self::FITS_THE_MASK;
        Self { values: [const { FieldValue::Absent }; Key::COUNT], written: 0 }
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
    }

    pub(super) fn get(&self, key: Key) -> &FieldValue<'de> {
        &self.values[key as usize]
    }
}

//! `teacher.cache`: where a run's teacher outputs are cached, what is kept per position, and
//! how the teacher answers the run's prompts first (`generate`).

/// `teacher.cache`: a directory, or a directory with what to keep per position.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum CacheConfig {
    Dir(String),
    Detailed {
        dir: String,
        /// Most probable tokens kept exactly per position (default 16).
        #[serde(default = "default_top_k")]
        top_k: usize,
        /// Bits per quantised log-probability: 2 to 16, or 32 for exact f32 (default 8).
        #[serde(default = "default_logprob_bits")]
        logprob_bits: u32,
        /// Tokens drawn per position from the teacher's distribution outside the top-k, which
        /// share its residual mass (default 24; 0: the residual is one bucket). With the
        /// defaults a position takes 112 bytes for a 49k vocabulary.
        #[serde(default = "default_tail_samples")]
        tail_samples: usize,
        /// The teacher answers the run's prompts (`data.source.kind: prompts`) before its
        /// targets are cached: sequence-level distillation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generate: Option<AnswerSettings>,
    },
}

/// `teacher.cache.generate`: how the teacher answers the run's prompts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerSettings {
    /// New tokens at most per answer (default 128); a longer answer is kept cut short, marked.
    #[serde(default = "default_answer_tokens")]
    pub max_new_tokens: usize,
    /// 0 (default): the teacher's most probable answer (greedy).
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    /// Prompts answered together in one batch (and written as one file).
    #[serde(default = "default_answer_batch")]
    pub batch_size: usize,
}

fn default_answer_tokens() -> usize {
    128
}
fn default_answer_batch() -> usize {
    32
}

impl AnswerSettings {
    /// Refuses settings that could not make an answer; errors name the key.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("teacher.cache.generate.{k}"), m));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!("must be 0 (greedy) or positive, got {}", self.temperature),
            );
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad("top_p", format!("must be in (0, 1], got {p}"));
        }
        if self.top_k == Some(0) {
            return bad("top_k", "must be at least 1".into());
        }
        Ok(())
    }
}

fn default_top_k() -> usize {
    16
}
fn default_tail_samples() -> usize {
    24
}
fn default_logprob_bits() -> u32 {
    8
}

impl CacheConfig {
    pub fn dir(&self) -> &str {
        match self {
            CacheConfig::Dir(d) | CacheConfig::Detailed { dir: d, .. } => d,
        }
    }
    pub fn top_k(&self) -> usize {
        match self {
            CacheConfig::Dir(_) => default_top_k(),
            CacheConfig::Detailed { top_k, .. } => *top_k,
        }
    }
    pub fn tail_samples(&self) -> usize {
        match self {
            CacheConfig::Dir(_) => default_tail_samples(),
            CacheConfig::Detailed { tail_samples, .. } => *tail_samples,
        }
    }
    pub fn logprob_bits(&self) -> u32 {
        match self {
            CacheConfig::Dir(_) => default_logprob_bits(),
            CacheConfig::Detailed { logprob_bits, .. } => *logprob_bits,
        }
    }
    /// How the teacher answers the run's prompts, when it does.
    pub fn generate(&self) -> Option<&AnswerSettings> {
        match self {
            CacheConfig::Dir(_) => None,
            CacheConfig::Detailed { generate, .. } => generate.as_ref(),
        }
    }
}

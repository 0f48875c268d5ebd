//! What a registered technique is: its `step:` name, how it builds a pass (or the sink) from
//! its settings, and its settings' schema. The table of them is [`crate::framework::registry`].

use serde::de::DeserializeOwned;

use crate::error::CompressError;
use crate::framework::pass::{Length, Pass};
use crate::framework::sink::Sink;

/// A step's settings as written (every key but `step`).
pub type Settings = serde_json::Map<String, serde_json::Value>;

/// What a step builds: a pass, the sink that writes the variant's artifact, or both (a pass
/// that encodes weights for the sink, as calibrated GGUF quantisation does).
pub(crate) enum Built {
    Pass(Box<dyn Pass>),
    Sink(Sink),
    PassThenSink(Box<dyn Pass>, Sink),
}

impl Built {
    pub fn label(&self) -> String {
        match self {
            Built::Pass(p) => p.label(),
            Built::Sink(s) | Built::PassThenSink(_, s) => s.label(),
        }
    }
}

/// Defaults that depend on the task.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// Length of a `heal` step that gives none.
    pub heal: Length,
}

impl Defaults {
    pub fn causal_lm() -> Self {
        Self {
            heal: Length::Steps(100),
        }
    }
    pub fn classification() -> Self {
        Self {
            heal: Length::Epochs(1),
        }
    }
}

/// A registered technique.
pub(crate) struct Technique {
    /// The `step:` value.
    pub name: &'static str,
    /// One line for the JSON Schema.
    pub summary: &'static str,
    /// Parses and checks the settings; a `Config` error's key is relative to the step.
    pub build: fn(&Settings, &Defaults) -> Result<Built, CompressError>,
    /// The settings' JSON Schema (without `step`).
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

/// Deserialises a step's settings into `T` (which refuses unknown keys).
pub(crate) fn settings<T: DeserializeOwned>(step: &str, s: &Settings) -> Result<T, CompressError> {
    serde_json::from_value(serde_json::Value::Object(s.clone())).map_err(|e| {
        CompressError::Config {
            key: String::new(),
            msg: format!("{step}: {e}"),
        }
    })
}

/// A settings type's schema, inline.
pub(crate) fn schema_of<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    T::json_schema(generator)
}

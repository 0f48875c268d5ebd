//! The `quantize` step: `int8` is a pass (per-channel int8 in the safetensors folder); a GGUF
//! type (`q8_0`, `q4_k`, ...) is the variant's GGUF sink, so it closes the variant.

use serde::Deserialize;

use crate::error::CompressError;
use crate::gguf_export::parse_qtype;
use crate::int8::Int8;
use crate::sink::Sink;
use crate::technique::{schema_of, settings, Built, Defaults, Settings, Technique};

/// Settings of `quantize`.
#[derive(Clone, Debug, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizeSettings {
    /// `int8` (per-channel, safetensors) or a GGUF type (`q8_0`, `q6_k`, `q5_k`, `q4_k`,
    /// `q5_0`, `q4_0`, `f16`; Llama only, exported as GGUF and measured through QMatMul).
    #[serde(rename = "type")]
    pub to: String,
}

pub(crate) const TECHNIQUE: Technique = Technique {
    name: "quantize",
    summary: "int8 per channel, or a GGUF type written as the variant's GGUF file (last step)",
    build,
    schema: schema_of::<QuantizeSettings>,
};

fn build(s: &Settings, _: &Defaults) -> Result<Built, CompressError> {
    let q: QuantizeSettings = settings("quantize", s)?;
    if q.to == "int8" {
        return Ok(Built::Pass(Box::new(Int8)));
    }
    let qtype = parse_qtype(&q.to).map_err(|_| CompressError::Config {
        key: "type".into(),
        msg: format!(
            "`{}`: expected int8, f16, q8_0, q6_k, q5_k, q5_0, q4_k or q4_0",
            q.to
        ),
    })?;
    Ok(Built::Sink(Sink::Gguf { qtype, name: q.to }))
}

//! Floating-point types a config names, as typed choices (the JSON Schema lists them, serde
//! names the key and the allowed values when one is wrong).

use candle_core::DType;
use serde::{Deserialize, Serialize};

/// A storage type for weights: `f32`, `f16` or `bf16`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl FloatType {
    pub fn dtype(self) -> DType {
        match self {
            FloatType::F32 => DType::F32,
            FloatType::F16 => DType::F16,
            FloatType::Bf16 => DType::BF16,
        }
    }
}

/// The type layer products are computed in over f32 master weights: `f32` (the weights' own)
/// or `bf16` (a GPU's tensor cores; slower than f32 on a CPU).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MatmulType {
    #[default]
    F32,
    Bf16,
}

impl MatmulType {
    /// The compute dtype, `None` for the weights' own f32.
    pub fn compute_dtype(self) -> Option<DType> {
        match self {
            MatmulType::F32 => None,
            MatmulType::Bf16 => Some(DType::BF16),
        }
    }
}

//! Named dense tensors as a weight source, so a model can be built from the output of a
//! compression pass without writing it to disk first.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use distill_models::{Matrix, ModelError, WeightSource};

use crate::error::CompressError;

/// Every value of `t` as f32, row-major; errors name `name`.
pub fn values_f32(name: &str, t: &Tensor) -> Result<Vec<f32>, CompressError> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|source| CompressError::Tensor {
            context: format!("reading `{name}`"),
            source,
        })
}

/// A weight stored in a compressed form (a weight absent from [`TensorMap::stored`] is dense).
#[derive(Clone, Debug)]
pub enum Stored {
    /// Int8 values `[out, in]` with one f32 scale per row.
    Int8 { q: Vec<i8>, scales: Vec<f32> },
    /// `2^bits` centroids (per matrix when `rows` is 1, else per row: `rows × 2^bits`) and one
    /// `bits`-bit index per weight.
    Shared {
        codebook: Vec<f32>,
        indices: Vec<u16>,
        bits: u32,
        rows: usize,
    },
    /// Factors `u [out, r]` and `v [r, in]`.
    LowRank { u: Tensor, v: Tensor },
    /// GGUF blocks of `dtype`, rows in Hugging Face order, which the GGUF sink writes as they
    /// are; `importance` is the importance-matrix entry that chose them (mean `x²` per input
    /// channel over `chunks` calibration blocks), if any.
    Gguf {
        dtype: candle_core::quantized::GgmlDType,
        data: Vec<u8>,
        importance: Option<Vec<f32>>,
        chunks: u32,
    },
}

impl Stored {
    /// Short name for reports and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Stored::Int8 { .. } => "int8",
            Stored::Shared { .. } => "k-means shared",
            Stored::LowRank { .. } => "low-rank",
            Stored::Gguf { .. } => "GGUF blocks",
        }
    }
}

/// Tensors by Hugging Face name. `tensors` always holds the dense value a model computes with;
/// `stored` says which of them are kept in a compressed form (and that form), for saving and,
/// for low-rank factors, for running.
#[derive(Clone)]
pub struct TensorMap {
    pub tensors: BTreeMap<String, Tensor>,
    pub stored: BTreeMap<String, Stored>,
    pub device: Device,
}

impl TensorMap {
    /// Reads every tensor `names` lists from `src` (dense, f32).
    pub fn read(
        src: &dyn WeightSource,
        names: impl IntoIterator<Item = (String, Vec<usize>)>,
    ) -> Result<Self, ModelError> {
        let mut tensors = BTreeMap::new();
        for (name, shape) in names {
            let t = src.tensor(&name, &shape, Init::Const(0.0))?;
            tensors.insert(name, t);
        }
        Ok(Self::from_tensors(tensors, src.device().clone()))
    }

    /// Dense tensors, none of them compressed yet.
    pub fn from_tensors(tensors: BTreeMap<String, Tensor>, device: Device) -> Self {
        Self {
            tensors,
            stored: BTreeMap::new(),
            device,
        }
    }

    /// Names of the 2-D tensors that `select` accepts and no pass has encoded yet; an error
    /// naming `pass` when there are none.
    pub fn dense_matrices(
        &self,
        select: impl Fn(&str) -> bool,
        pass: &str,
    ) -> Result<Vec<String>, CompressError> {
        let names: Vec<String> = self
            .tensors
            .iter()
            .filter(|(n, t)| select(n) && t.rank() == 2 && !self.stored.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() {
            return Err(CompressError::Unsupported(format!(
                "{pass}: no dense matrices left to encode"
            )));
        }
        Ok(names)
    }

    /// Rounds every dense value (and low-rank factor) to `dtype` and back, so that the model
    /// measured in memory is exactly the one written in `dtype`.
    pub fn round_dense_to(&mut self, dtype: DType) -> candle_core::Result<()> {
        if dtype == DType::F32 {
            return Ok(());
        }
        let round = |t: &Tensor| t.to_dtype(dtype)?.to_dtype(DType::F32);
        for (name, t) in self.tensors.iter_mut() {
            match self.stored.get_mut(name) {
                None => *t = round(t)?,
                Some(Stored::LowRank { u, v }) => {
                    *u = round(u)?;
                    *v = round(v)?;
                    *t = u.matmul(v)?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Number of values in all tensors (a low-rank matrix counts its factors).
    pub fn parameters(&self) -> usize {
        self.tensors
            .iter()
            .map(|(n, t)| match self.stored.get(n) {
                Some(Stored::LowRank { u, v }) => u.elem_count() + v.elem_count(),
                _ => t.elem_count(),
            })
            .sum()
    }
}

impl WeightSource for TensorMap {
    fn source_name(&self) -> String {
        "compressed tensors".into()
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        DType::F32
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn matrix(&self, name: &str, out: usize, inp: usize, init: Init) -> Result<Matrix, ModelError> {
        if let Some(Stored::LowRank { u, v }) = self.stored.get(name) {
            if u.dims() == [out, u.dims()[1]] && v.dims()[1] == inp {
                return Ok(Matrix::LowRank {
                    u: u.clone(),
                    v: v.clone(),
                });
            }
        }
        Ok(Matrix::Dense(self.tensor(name, &[out, inp], init)?))
    }
    fn tensor(&self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                source_name: self.source_name(),
                name: name.to_string(),
            })?;
        if t.dims() != shape {
            return Err(ModelError::Shape {
                source_name: self.source_name(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.clone())
    }
}

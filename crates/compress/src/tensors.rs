//! Named dense tensors as a weight source, so a model can be built from the output of a
//! compression pass without writing it to disk first.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use distill_models::{ModelError, WeightSource};

/// Tensors by Hugging Face name.
pub struct TensorMap {
    pub tensors: BTreeMap<String, Tensor>,
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
        Ok(Self {
            tensors,
            device: src.device().clone(),
        })
    }

    /// Number of values in all tensors.
    pub fn parameters(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
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

//! Where a model's weights come from, and the linear layer that uses them.
//!
//! A model is written once, against [`WeightSource`], and names its tensors exactly as the
//! Hugging Face checkpoint does. The same code then runs on frozen memory-mapped safetensors,
//! trainable variables of a [`VarMap`], or a GGUF file whose matrices stay quantised.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::encoded::{
    decode_int8, decode_shared, f32_values, CODEBOOK, INDICES, LOW_RANK_U, LOW_RANK_V, SCALE,
};
use crate::error::{ModelError, Result, TensorContext};

/// The variables of `vm`, locked. A lock poisoned by a panic elsewhere still holds whole
/// tensors (a panic never leaves one half-written), so it is taken as it is.
pub fn vars(
    vm: &VarMap,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, candle_core::Var>> {
    vm.data().lock().unwrap_or_else(|p| p.into_inner())
}

/// A provider of named tensors for building a model.
pub trait WeightSource {
    /// Human-readable name used in errors (a file path, or "trainable variables").
    fn source_name(&self) -> String;
    /// Device the tensors are placed on.
    fn device(&self) -> &Device;
    /// Floating-point dtype of dense tensors.
    fn dtype(&self) -> DType;
    /// Whether a tensor of this name exists (for a trainable source: whether the variable was
    /// created already; [`WeightSource::tensor`] creates a missing one).
    fn contains(&self, name: &str) -> bool;
    /// A dense tensor of the given shape. `init` is used only by sources that create tensors.
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor>;
    /// Whether [`WeightSource::matrix`] returns quantised matrices.
    fn keeps_quantized(&self) -> bool {
        false
    }
    /// A weight matrix `[out, inp]` as a linear layer uses it; quantised sources keep it quantised.
    fn matrix(&self, name: &str, out: usize, inp: usize, init: Init) -> Result<Matrix> {
        Ok(Matrix::Dense(self.tensor(name, &[out, inp], init)?))
    }
}

/// A weight matrix `[out, inp]`: dense, quantised and multiplied through [`QMatMul`], or the
/// product `u · v` of two low-rank factors, applied one after the other.
#[derive(Clone, Debug)]
pub enum Matrix {
    Dense(Tensor),
    Quantized {
        qtensor: Arc<QTensor>,
        matmul: QMatMul,
    },
    /// `u`: `[out, r]`, `v`: `[r, inp]`.
    LowRank {
        u: Tensor,
        v: Tensor,
    },
}

impl Matrix {
    /// Wraps a quantised tensor for matrix products.
    pub fn quantized(qtensor: QTensor) -> candle_core::Result<Self> {
        let qtensor = Arc::new(qtensor);
        let matmul = QMatMul::from_arc(qtensor.clone())?;
        Ok(Matrix::Quantized { qtensor, matmul })
    }

    /// The matrix as a dense tensor (dequantised if need be).
    pub fn to_dense(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Matrix::Dense(t) => Ok(t.clone()),
            Matrix::Quantized { qtensor, .. } => qtensor.dequantize(device),
            Matrix::LowRank { u, v } => u.matmul(v),
        }
    }
}

/// `y = x Wᵀ + b` over the last dimension of `x`, for any number of leading dimensions.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Matrix,
    bias: Option<Tensor>,
    /// Multiply dense matrices in this dtype (input and weight cast, the product cast back):
    /// bf16 products over f32 master weights on a GPU's tensor cores.
    compute: Option<DType>,
}

impl Linear {
    pub fn new(weight: Matrix, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            compute: None,
        }
    }

    /// Multiplies in `dtype` from now on (`None`: in the input's dtype). Gradients flow back
    /// through the casts to the weights in their own dtype.
    pub fn set_compute_dtype(&mut self, dtype: Option<DType>) {
        self.compute = dtype;
    }

    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`) of shape `[out, inp]`.
    pub fn load(
        src: &dyn WeightSource,
        prefix: &str,
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Result<Self> {
        // Normal(0, 0.02): the initialiser of BERT and Llama checkpoints in transformers.
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let weight = src.matrix(&format!("{prefix}.weight"), out, inp, init)?;
        let bias = if bias {
            Some(src.tensor(&format!("{prefix}.bias"), &[out], Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    pub fn weight(&self) -> &Matrix {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let product = |x: &Tensor, w: &Tensor| match self.compute {
            Some(dt) if dt != x.dtype() || dt != w.dtype() => {
                times_transposed(&x.to_dtype(dt)?, &w.to_dtype(dt)?)?.to_dtype(x.dtype())
            }
            _ => times_transposed(x, w),
        };
        let y = match &self.weight {
            Matrix::Dense(w) => product(x, w)?,
            Matrix::Quantized { matmul, .. } => matmul.forward(x)?,
            Matrix::LowRank { u, v } => product(&product(x, v)?, u)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `x wᵀ` over the last dimension of `x`, for any number of leading dimensions.
/// `x · wᵀ` over the last dimension of `x` (`[.., k]` times `[n, k]`), as a dense `Linear`
/// computes it.
pub fn times_transposed(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k.max(1);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("non-scalar input") = w.dim(0)?;
    let x = x.reshape((rows, k))?;
    if rows > 1 && rows <= FEW_ROWS && w.device().is_cpu() {
        // A few rows (decoding steps): `(w · xᵀ)ᵀ`, so that the CPU product packs the few
        // rows instead of the whole weight matrix on every call.
        return w.matmul(&x.t()?)?.t()?.contiguous()?.reshape(out_dims);
    }
    x.matmul(&w.t()?)?.reshape(out_dims)
}

/// Rows up to which a CPU product `x · wᵀ` is computed as `(w · xᵀ)ᵀ`.
const FEW_ROWS: usize = 32;

fn check_shape(source_name: &str, name: &str, expected: &[usize], got: &[usize]) -> Result<()> {
    if expected != got {
        return Err(ModelError::Shape {
            source_name: source_name.to_string(),
            name: name.to_string(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        });
    }
    Ok(())
}

/// Frozen weights memory-mapped from one or more safetensors files (sharded checkpoints too).
pub struct SafetensorsWeights {
    files: Vec<PathBuf>,
    st: MmapedSafetensors,
    device: Device,
    dtype: DType,
}

impl SafetensorsWeights {
    /// Maps the files; every tensor is converted to `dtype` on `device` when it is read.
    pub fn open(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        for f in files {
            let meta = std::fs::metadata(f).map_err(|source| ModelError::Io {
                path: f.clone(),
                source,
            })?;
            if meta.len() < 8 {
                return Err(ModelError::Format {
                    path: f.clone(),
                    msg: format!("{} bytes is too short for a safetensors file", meta.len()),
                });
            }
        }
        // SAFETY: the files are inputs that this process only reads; as with every mmap-based
        // loader, they must not be truncated by another process while the model is alive.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(|e| ModelError::Format {
            path: files.first().cloned().unwrap_or_default(),
            msg: format!("not a valid safetensors file: {e}"),
        })?;
        Ok(Self {
            files: files.to_vec(),
            st,
            device: device.clone(),
            dtype,
        })
    }

    /// Names, dtypes and shapes of every tensor in the files.
    pub fn tensor_infos(&self) -> Vec<(String, String, Vec<usize>)> {
        let mut v: Vec<_> = self
            .st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, format!("{:?}", view.dtype()), view.shape().to_vec()))
            .collect();
        v.sort();
        v
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The mapped files.
    pub fn mapped(&self) -> &MmapedSafetensors {
        &self.st
    }
}

impl SafetensorsWeights {
    /// A weight stored in one of the compressed forms of [`crate::encoded`], decoded to a dense
    /// f32 tensor of `shape`; `None` when `name` is stored densely.
    fn decoded(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let src = self.source_name();
        let get = |suffix: &str| self.st.get(&format!("{name}{suffix}")).ok();
        if let (Some(u), Some(v)) = (get(LOW_RANK_U), get(LOW_RANK_V)) {
            let (us, vs) = (u.shape().to_vec(), v.shape().to_vec());
            let fits = us.len() == 2 && vs.len() == 2 && us[1] == vs[0];
            check_shape(&src, name, shape, &[us[0], if fits { vs[1] } else { 0 }])?;
            let (u, v) = (
                self.dense(&format!("{name}{LOW_RANK_U}"))?,
                self.dense(&format!("{name}{LOW_RANK_V}"))?,
            );
            return Ok(Some(u.matmul(&v)?));
        }
        if let (Some(codebook), Some(indices)) = (get(CODEBOOK), get(INDICES)) {
            let codebook_rows = match codebook.shape() {
                [rows, _] => *rows,
                _ => 1,
            };
            let codebook = f32_values(
                &src,
                &format!("{name}{CODEBOOK}"),
                codebook.dtype(),
                codebook.data(),
            )?;
            return decode_shared(
                &src,
                name,
                &codebook,
                codebook_rows,
                indices.data(),
                shape,
                &self.device,
            )
            .map(Some);
        }
        match (self.st.get(name).ok(), get(SCALE)) {
            (Some(q), Some(scale)) if q.dtype() == safetensors::Dtype::I8 => {
                check_shape(&src, name, shape, q.shape())?;
                let scales =
                    f32_values(&src, &format!("{name}{SCALE}"), scale.dtype(), scale.data())?;
                decode_int8(&src, name, q.data(), &scales, shape, &self.device).map(Some)
            }
            (Some(q), _) if q.dtype() == safetensors::Dtype::I8 => Err(ModelError::Format {
                path: src.into(),
                msg: format!("int8 tensor `{name}` has no `{name}{SCALE}`"),
            }),
            _ => Ok(None),
        }
    }

    /// A dense tensor as stored, in the source's dtype.
    fn dense(&self, name: &str) -> Result<Tensor> {
        let t = self
            .st
            .load(name, &self.device)
            .context(|| format!("{}: reading tensor `{name}`", self.source_name()))?;
        Ok(t.to_dtype(self.dtype)?)
    }
}

impl WeightSource for SafetensorsWeights {
    fn matrix(&self, name: &str, out: usize, inp: usize, init: Init) -> Result<Matrix> {
        let u_name = format!("{name}{LOW_RANK_U}");
        if let (Ok(u), Ok(v)) = (
            self.st.get(&u_name),
            self.st.get(&format!("{name}{LOW_RANK_V}")),
        ) {
            let (us, vs) = (u.shape().to_vec(), v.shape().to_vec());
            if us.len() != 2 || vs.len() != 2 || us[1] != vs[0] || us[0] != out || vs[1] != inp {
                return Err(ModelError::Shape {
                    source_name: self.source_name(),
                    name: format!("{name} (low-rank factors {us:?} · {vs:?})"),
                    expected: vec![out, inp],
                    got: vec![
                        us.first().copied().unwrap_or(0),
                        vs.last().copied().unwrap_or(0),
                    ],
                });
            }
            return Ok(Matrix::LowRank {
                u: self.dense(&u_name)?,
                v: self.dense(&format!("{name}{LOW_RANK_V}"))?,
            });
        }
        Ok(Matrix::Dense(self.tensor(name, &[out, inp], init)?))
    }
    fn source_name(&self) -> String {
        match self.files.as_slice() {
            [one] => one.display().to_string(),
            many => format!(
                "{} (+{} more shards)",
                many.first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                many.len().saturating_sub(1)
            ),
        }
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn contains(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
            || self.st.get(&format!("{name}{CODEBOOK}")).is_ok()
            || self.st.get(&format!("{name}{LOW_RANK_U}")).is_ok()
    }
    fn tensor(&self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        if let Some(t) = self.decoded(name, shape)? {
            return Ok(t.to_dtype(self.dtype)?);
        }
        let view = self.st.get(name).map_err(|_| ModelError::MissingTensor {
            source_name: self.source_name(),
            name: name.to_string(),
        })?;
        check_shape(&self.source_name(), name, shape, view.shape())?;
        let t = self
            .st
            .load(name, &self.device)
            .context(|| format!("{}: reading tensor `{name}`", self.source_name()))?;
        t.to_dtype(self.dtype).context(|| {
            format!(
                "{}: converting tensor `{name}` to {:?}",
                self.source_name(),
                self.dtype
            )
        })
    }
}

/// Trainable weights: variables of a [`VarMap`], created on first use with the given init
/// (or taken as they are when the map already holds them, e.g. after loading a checkpoint).
pub struct VarMapWeights {
    varmap: VarMap,
    vb: VarBuilder<'static>,
    device: Device,
    dtype: DType,
    frozen: Option<NamePredicate>,
    seed: Option<u64>,
}

/// Decides by variable name (e.g. whether it is frozen).
pub type NamePredicate = Box<dyn Fn(&str) -> bool>;

impl VarMapWeights {
    pub fn new(varmap: &VarMap, dtype: DType, device: &Device) -> Self {
        Self {
            varmap: varmap.clone(),
            vb: VarBuilder::from_varmap(varmap, dtype, device),
            device: device.clone(),
            dtype,
            frozen: None,
            seed: None,
        }
    }

    /// Variables created here with a normal init draw from a ChaCha8 stream seeded by `seed`
    /// and the variable's name, instead of candle's unseeded generator: a fresh head (a
    /// classifier fine-tuned from an encoder) starts the same in every run.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// A `Randn` variable drawn from the seeded stream, put in the map before candle would
    /// create it.
    fn create_seeded(
        &self,
        name: &str,
        shape: &[usize],
        mean: f64,
        stdev: f64,
        seed: u64,
    ) -> Result<()> {
        use rand::Rng;
        use rand::SeedableRng;
        // FNV-1a of the name: the draw does not depend on the order variables are made in.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ h);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mean + stdev * z) as f32
            })
            .collect();
        let t = Tensor::from_vec(data, shape, &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .context(|| format!("trainable variable `{name}` of shape {shape:?}"))?;
        let var =
            candle_core::Var::from_tensor(&t).context(|| format!("trainable variable `{name}`"))?;
        vars(&self.varmap).insert(name.to_string(), var);
        Ok(())
    }

    /// Variables whose name matches `is_frozen` are handed out detached: they stay in the map
    /// (and are saved with it) but carry no gradient, so backward stops below them.
    pub fn with_frozen(mut self, is_frozen: impl Fn(&str) -> bool + 'static) -> Self {
        self.frozen = Some(Box::new(is_frozen));
        self
    }
}

impl WeightSource for VarMapWeights {
    fn source_name(&self) -> String {
        "trainable variables".to_string()
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    /// Whether the variable exists already (a missing one is created on first use).
    fn contains(&self, name: &str) -> bool {
        vars(&self.varmap).contains_key(name)
    }
    fn tensor(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        if let (Some(seed), Init::Randn { mean, stdev }) = (self.seed, init) {
            if !self.contains(name) {
                self.create_seeded(name, shape, mean, stdev, seed)?;
            }
        }
        let t = self
            .vb
            .get_with_hints(shape, name, init)
            .context(|| format!("trainable variable `{name}` of shape {shape:?}"))?;
        match &self.frozen {
            Some(is_frozen) if is_frozen(name) => Ok(t.detach()),
            _ => Ok(t),
        }
    }
}

/// Sum of the sizes of the given files, for reports.
pub fn bytes_on_disk(files: &[impl AsRef<Path>]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f.as_ref()).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16 products round (the output differs from f32's, by bf16's precision) and their
    /// gradient reaches an f32 weight as f32.
    #[test]
    fn a_linear_multiplies_in_its_compute_dtype_over_f32_weights() {
        let dev = Device::Cpu;
        let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (24, 64), &dev).unwrap())
            .unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 64), &dev).unwrap();
        let mut l = Linear::new(Matrix::Dense(w.as_tensor().clone()), None);
        let exact = l.forward(&x).unwrap();
        l.set_compute_dtype(Some(DType::BF16));
        let y = l.forward(&x).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let diff = (&y - &exact).unwrap().abs().unwrap();
        let (max, scale) = (
            diff.max_all().unwrap().to_scalar::<f32>().unwrap(),
            exact
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        );
        assert!(max > 0.0, "the product was not rounded to bf16");
        assert!(
            max < 2e-2 * scale,
            "bf16 product off by {max} (scale {scale})"
        );
        let g = y.sum_all().unwrap().backward().unwrap();
        let gw = g.get(w.as_tensor()).expect("a gradient for the weight");
        assert_eq!(gw.dtype(), DType::F32);
        assert_eq!(gw.dims(), &[24, 64]);
    }

    fn head(seed: Option<u64>, vm: &VarMap) -> Vec<f32> {
        let mut w = VarMapWeights::new(vm, DType::F32, &Device::Cpu);
        if let Some(s) = seed {
            w = w.with_seed(s);
        }
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        w.tensor("classifier.weight", &[3, 8], init)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn seeded_variables_are_the_same_in_every_run_and_existing_ones_are_kept() {
        let a = head(Some(7), &VarMap::new());
        assert_eq!(a, head(Some(7), &VarMap::new()));
        assert_ne!(a, head(Some(8), &VarMap::new()));
        let sd = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        assert!((0.005..0.05).contains(&sd), "stdev {sd}");
        // A variable the map holds (a checkpoint) is taken as it is.
        let vm = VarMap::new();
        let first = head(Some(1), &vm);
        assert_eq!(head(Some(2), &vm), first);
    }
}

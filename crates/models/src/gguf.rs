//! GGUF files: metadata access with typed, key-naming errors, and a [`WeightSource`] that keeps
//! matrices quantised (multiplied through `QMatMul`) or dequantises them on request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::Init;

use crate::error::{ModelError, Result, TensorContext};
use crate::weights::{Matrix, WeightSource};

/// An open GGUF file: its parsed header and a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: Mutex<BufReader<File>>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .finish()
    }
}

impl GgufFile {
    /// Parses the header (metadata and tensor table). Tensor data is read lazily.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| ModelError::Format {
            path: path.to_path_buf(),
            msg: format!("not a valid GGUF file: {e}"),
        })?;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        // Check the whole tensor table against the file size up front, so a truncated file is
        // reported once, by name, rather than when the first missing tensor is touched.
        for (name, info) in &content.tensor_infos {
            let end = content.tensor_data_offset + info.offset + tensor_bytes(info) as u64;
            if end > size {
                return Err(ModelError::Format {
                    path: path.to_path_buf(),
                    msg: format!(
                        "truncated: tensor `{name}` ends at byte {end} but the file has {size} bytes"
                    ),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader: Mutex::new(reader),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The parsed header.
    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.content.tensor_infos
    }

    fn config_err(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Config {
            source_name: self.path.display().to_string(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    /// The raw value of a key, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A required unsigned integer (any GGUF integer type holding a non-negative value).
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .ok_or_else(|| self.config_err(key, "missing"))?;
        value_as_u64(v).map(|v| v as usize).ok_or_else(|| {
            self.config_err(key, format!("expected a non-negative integer, found {v:?}"))
        })
    }

    /// An optional unsigned integer.
    pub fn get_usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_usize(key).map(Some),
        }
    }

    /// An optional float (f32 or f64).
    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v as f64)),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(v) => Err(self.config_err(key, format!("expected a float, found {v:?}"))),
        }
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            None => Err(self.config_err(key, "missing")),
            Some(Value::String(s)) => Ok(s),
            Some(v) => {
                Err(self.config_err(key, format!("expected a string, found {}", type_name(v))))
            }
        }
    }

    /// An optional boolean.
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => {
                Err(self.config_err(key, format!("expected a bool, found {}", type_name(v))))
            }
        }
    }

    /// A required array whose elements `convert` maps (`None` = wrong element type, named by `what`).
    fn get_array<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        convert: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Vec<T>> {
        let arr = match self.get(key) {
            None => return Err(self.config_err(key, "missing")),
            Some(Value::Array(a)) => a,
            Some(v) => {
                return Err(
                    self.config_err(key, format!("expected an array, found {}", type_name(v)))
                )
            }
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| {
                convert(v).ok_or_else(|| {
                    self.config_err(
                        key,
                        format!("element {i}: expected {what}, found {}", type_name(v)),
                    )
                })
            })
            .collect()
    }

    /// A required array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key, "a string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// A required array of floats.
    pub fn get_floats(&self, key: &str) -> Result<Vec<f32>> {
        self.get_array(key, "a float", |v| match v {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            _ => None,
        })
    }

    /// A required array of integers.
    pub fn get_ints(&self, key: &str) -> Result<Vec<i64>> {
        self.get_array(key, "an integer", value_as_i64)
    }

    /// Reads one tensor as stored (quantised or not).
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(ModelError::MissingTensor {
                source_name: self.path.display().to_string(),
                name: name.to_string(),
            });
        }
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        self.content
            .tensor(&mut *reader, name, device)
            .context(|| format!("{}: reading tensor `{name}`", self.path.display()))
    }

    /// Total bytes of tensor data, by GGUF dtype name.
    pub fn bytes_by_dtype(&self) -> Vec<(String, usize, u64)> {
        let mut by: HashMap<String, (usize, u64)> = HashMap::new();
        for info in self.content.tensor_infos.values() {
            let e = by.entry(format!("{:?}", info.ggml_dtype)).or_default();
            e.0 += 1;
            e.1 += tensor_bytes(info) as u64;
        }
        let mut v: Vec<_> = by.into_iter().map(|(k, (n, b))| (k, n, b)).collect();
        v.sort();
        v
    }
}

fn tensor_bytes(info: &TensorInfo) -> usize {
    info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()
}

fn type_name(v: &Value) -> String {
    format!("{:?}", v.value_type())
}

fn value_as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn value_as_u64(v: &Value) -> Option<u64> {
    value_as_i64(v).and_then(|x| u64::try_from(x).ok())
}

/// How a GGUF tensor is found for a checkpoint-style name.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorRef {
    /// Name of the tensor in the GGUF file.
    pub name: String,
    /// Undo llama.cpp's interleaved-rope row permutation for this many heads (Q and K of the
    /// `llama` architecture), so the weights are in the Hugging Face (half-split rope) layout.
    pub unpermute_heads: Option<usize>,
    /// The stored values are the Hugging Face ones plus this (llama.cpp's Gemma converter
    /// stores norm weights as `1 + w`); subtracted on reading.
    pub shift: f32,
}

impl GgufTensorRef {
    /// A tensor stored as the checkpoint holds it, under another name.
    pub fn plain(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            unpermute_heads: None,
            shift: 0.0,
        }
    }
}

/// Maps a Hugging Face tensor name to the GGUF tensor that holds it.
pub type NameMap = Box<dyn Fn(&str) -> Option<GgufTensorRef> + Send + Sync>;

/// Whether matrices stay quantised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufMode {
    /// Matrices are multiplied in their stored format through `QMatMul`.
    Quantized,
    /// Every tensor is dequantised to the source's dtype.
    Dequantized,
}

/// Weights read from a GGUF file under Hugging Face names.
pub struct GgufWeights {
    file: Arc<GgufFile>,
    map: NameMap,
    mode: GgufMode,
    device: Device,
    dtype: DType,
}

impl GgufWeights {
    pub fn new(
        file: Arc<GgufFile>,
        map: NameMap,
        mode: GgufMode,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            file,
            map,
            mode,
            device: device.clone(),
            dtype,
        }
    }

    fn resolve(&self, name: &str) -> Result<GgufTensorRef> {
        (self.map)(name).ok_or_else(|| ModelError::MissingTensor {
            source_name: self.file.path.display().to_string(),
            name: format!("{name} (no GGUF equivalent)"),
        })
    }

    fn read(&self, name: &str, shape: &[usize]) -> Result<(GgufTensorRef, QTensor)> {
        let r = self.resolve(name)?;
        let qt = self.file.qtensor(&r.name, &self.device)?;
        if qt.shape().dims() != shape {
            return Err(ModelError::Shape {
                source_name: self.file.path.display().to_string(),
                name: r.name.clone(),
                expected: shape.to_vec(),
                got: qt.shape().dims().to_vec(),
            });
        }
        Ok((r, qt))
    }
}

impl WeightSource for GgufWeights {
    fn source_name(&self) -> String {
        self.file.path.display().to_string()
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn keeps_quantized(&self) -> bool {
        self.mode == GgufMode::Quantized
    }
    fn contains(&self, name: &str) -> bool {
        (self.map)(name).is_some_and(|r| self.file.tensor_infos().contains_key(&r.name))
    }
    fn tensor(&self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        let (r, qt) = self.read(name, shape)?;
        let ctx = || format!("{}: dequantising `{}`", self.source_name(), r.name);
        let t = qt.dequantize(&self.device).context(ctx)?;
        let t = match r.unpermute_heads {
            Some(heads) => unpermute_dense(&t, heads).context(ctx)?,
            None => t,
        };
        let t = if r.shift == 0.0 {
            t
        } else {
            (t - f64::from(r.shift)).context(ctx)?
        };
        t.to_dtype(self.dtype).context(ctx)
    }
    fn matrix(&self, name: &str, out: usize, inp: usize, init: Init) -> Result<Matrix> {
        if self.mode == GgufMode::Dequantized {
            return Ok(Matrix::Dense(self.tensor(name, &[out, inp], init)?));
        }
        let (r, qt) = self.read(name, &[out, inp])?;
        let ctx = || format!("{}: preparing `{}`", self.source_name(), r.name);
        let qt = match r.unpermute_heads {
            Some(heads) => unpermute_quantized_rows(&qt, heads).context(ctx)?,
            None => qt,
        };
        Matrix::quantized(qt).context(ctx)
    }
}

/// Inverse of the conversion-time permutation `w.reshape(h, 2, d/2, ..).swapaxes(1, 2)`:
/// GGUF row `h·d + 2i + t` becomes Hugging Face row `h·d + t·d/2 + i`. Works for matrices
/// (rows) and bias vectors.
pub fn unpermute_dense(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let head_dim = rows / heads;
    let rest: usize = dims[1..].iter().product();
    t.reshape((heads, head_dim / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// The same permutation on a quantised matrix: quantisation blocks run along rows, so moving
/// whole rows of bytes keeps the data exact.
pub fn unpermute_quantized_rows(qt: &QTensor, heads: usize) -> candle_core::Result<QTensor> {
    let (rows, cols) = qt.shape().dims2()?;
    let dtype: GgmlDType = qt.dtype();
    if cols % dtype.block_size() != 0 || rows % heads != 0 || !(rows / heads).is_multiple_of(2) {
        candle_core::bail!("cannot unpermute a {rows}x{cols} {dtype:?} matrix over {heads} heads");
    }
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = qt.data()?;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for i in 0..half {
                let dst = h * head_dim + t * half + i;
                let src = h * head_dim + 2 * i + t;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let device = qt.device();
    let storage = QStorage::from_data(Cow::Owned(out), &device, dtype)?;
    QTensor::new(storage, (rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conversion-time permutation of llama.cpp's converter, for testing its inverse.
    fn permute(t: &Tensor, heads: usize) -> Tensor {
        let dims = t.dims().to_vec();
        let hd = dims[0] / heads;
        let rest: usize = dims[1..].iter().product();
        t.reshape((heads, 2, hd / 2, rest))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape(dims)
            .unwrap()
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation_dense_and_quantized() {
        let dev = Device::Cpu;
        let (heads, hd, cols) = (3, 8, 64);
        let w = Tensor::randn(0f32, 1.0, (heads * hd, cols), &dev).unwrap();
        let p = permute(&w, heads);
        let back = unpermute_dense(&p, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        let b = Tensor::arange(0f32, (heads * hd) as f32, &dev).unwrap();
        let bb = unpermute_dense(&permute(&b, heads), heads).unwrap();
        assert_eq!(bb.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());

        // Quantised rows move as whole blocks: dequantise(unpermute(q(p))) == unpermute(dequantise(q(p))).
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1, GgmlDType::F32] {
            let q = QTensor::quantize(&p, dtype).unwrap();
            let a = unpermute_quantized_rows(&q, heads)
                .unwrap()
                .dequantize(&dev)
                .unwrap();
            let b = unpermute_dense(&q.dequantize(&dev).unwrap(), heads).unwrap();
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(diff, 0.0, "{dtype:?}");
        }
    }

    #[test]
    fn a_file_that_is_not_gguf_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("distill-gguf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.gguf");
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00garbage").unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("bad.gguf") && e.contains("GGUF"), "{e}");
        std::fs::write(&p, b"PK\x03\x04 this is a zip").unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("bad.gguf"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

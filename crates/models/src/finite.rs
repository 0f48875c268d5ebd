//! NaN and infinite values in weight files, found by tensor name before a model runs on them:
//! a damaged file would otherwise give `perplexity NaN` and a run that learns nothing, with no
//! word of where the damage is.
//!
//! The scan reads the stored bits, with no conversion and no copy of a whole tensor: float
//! tensors element by element (an all-ones exponent is NaN or ±Inf in f32, f16, bf16 and f64
//! alike), quantised GGUF tensors by the float scales of their blocks (their integer codes
//! cannot be non-finite).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::weights::SafetensorsWeights;

/// How an element's bits are laid out.
#[derive(Clone, Copy, Debug)]
enum Float {
    F16,
    BF16,
    F32,
    F64,
}

impl Float {
    fn bytes(self) -> usize {
        match self {
            Float::F16 | Float::BF16 => 2,
            Float::F32 => 4,
            Float::F64 => 8,
        }
    }

    /// Whether the value stored at the start of `b` is NaN or infinite.
    fn non_finite(self, b: &[u8]) -> bool {
        match self {
            Float::F16 => u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00,
            Float::BF16 => u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80,
            Float::F32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000,
            Float::F64 => {
                let bits = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                bits & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
            }
        }
    }
}

/// Where the float fields of one stored block sit: its size in bytes and (offset, layout) of
/// each field (for a plain float tensor, one element).
struct Fields {
    block: usize,
    at: &'static [(usize, Float)],
}

/// The float fields of a GGUF type's blocks, as ggml lays them out (`ggml-common.h`); every
/// type candle reads is listed, so a new one fails to compile here until its layout is added.
fn fields(dtype: GgmlDType) -> Fields {
    use Float::*;
    let (block, at): (usize, &'static [(usize, Float)]) = match dtype {
        GgmlDType::F32 => (4, &[(0, F32)]),
        GgmlDType::F16 => (2, &[(0, F16)]),
        GgmlDType::BF16 => (2, &[(0, BF16)]),
        GgmlDType::Q4_0 => (18, &[(0, F16)]),
        GgmlDType::Q4_1 => (20, &[(0, F16), (2, F16)]),
        GgmlDType::Q5_0 => (22, &[(0, F16)]),
        GgmlDType::Q5_1 => (24, &[(0, F16), (2, F16)]),
        GgmlDType::Q8_0 => (34, &[(0, F16)]),
        GgmlDType::Q8_1 => (36, &[(0, F16), (2, F16)]),
        GgmlDType::Q2K => (84, &[(80, F16), (82, F16)]),
        GgmlDType::Q3K => (110, &[(108, F16)]),
        GgmlDType::Q4K => (144, &[(0, F16), (2, F16)]),
        GgmlDType::Q5K => (176, &[(0, F16), (2, F16)]),
        GgmlDType::Q6K => (210, &[(208, F16)]),
        GgmlDType::Q8K => (292, &[(0, F32)]),
    };
    Fields { block, at }
}

/// Whether any block of `data` holds a non-finite float field.
fn has_non_finite(data: &[u8], f: &Fields) -> bool {
    data.chunks_exact(f.block)
        .any(|b| f.at.iter().any(|&(off, kind)| kind.non_finite(&b[off..])))
}

/// The tensors of the safetensors `files` that hold NaN or infinite values, sorted (a file
/// that is not safetensors is an error naming it, as loading it is).
pub fn non_finite_in_safetensors(files: &[PathBuf]) -> Result<Vec<String>> {
    let st = SafetensorsWeights::open(files, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let mut bad: Vec<String> = st
        .mapped()
        .tensors()
        .into_par_iter()
        .filter_map(|(name, view)| {
            use safetensors::Dtype;
            let kind = match view.dtype() {
                Dtype::F16 => Float::F16,
                Dtype::BF16 => Float::BF16,
                Dtype::F32 => Float::F32,
                Dtype::F64 => Float::F64,
                _ => return None,
            };
            let f = Fields {
                block: kind.bytes(),
                at: match kind {
                    Float::F16 => &[(0, Float::F16)],
                    Float::BF16 => &[(0, Float::BF16)],
                    Float::F32 => &[(0, Float::F32)],
                    Float::F64 => &[(0, Float::F64)],
                },
            };
            has_non_finite(view.data(), &f).then_some(name)
        })
        .collect();
    bad.sort();
    Ok(bad)
}

/// The tensors of the GGUF file at `path` that hold NaN or infinite values (in a float
/// tensor, or in the scales of a quantised one), sorted.
pub fn non_finite_in_gguf(path: &Path) -> Result<Vec<String>> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Opened as a model is first, so a damaged header or a truncated file says so by name.
    let gguf = GgufFile::open(path)?;
    let content = gguf.content();
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut bad = vec![];
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &content.tensor_infos[name];
        let f = fields(info.ggml_dtype);
        let elems: usize = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * f.block;
        file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
            .map_err(io)?;
        // Whole blocks at a time, about 1 MiB a read.
        let chunk = (1 << 20) / f.block * f.block;
        let mut buf = vec![0u8; chunk.min(bytes)];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            file.read_exact(&mut buf[..n]).map_err(io)?;
            if has_non_finite(&buf[..n], &f) {
                bad.push(name.clone());
                break;
            }
            left -= n;
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layouts_match_ggml_sizes() {
        for dt in [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q8_1,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::Q8K,
        ] {
            assert_eq!(fields(dt).block, dt.type_size(), "{dt:?}");
        }
    }

    #[test]
    fn every_float_layout_knows_nan_and_inf() {
        let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes().to_vec();
        let bf16 = |v: f32| half::bf16::from_f32(v).to_le_bytes().to_vec();
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(Float::F16.non_finite(&f16(v)));
            assert!(Float::BF16.non_finite(&bf16(v)));
            assert!(Float::F32.non_finite(&v.to_le_bytes()));
            assert!(Float::F64.non_finite(&(v as f64).to_le_bytes()));
        }
        for v in [0.0, -1.5, 65504.0, f32::MIN_POSITIVE] {
            assert!(!Float::F16.non_finite(&f16(v)));
            assert!(!Float::BF16.non_finite(&bf16(v)));
            assert!(!Float::F32.non_finite(&v.to_le_bytes()));
        }
    }

    #[test]
    fn damaged_tensors_are_named_in_safetensors_and_gguf() {
        use candle_core::quantized::{gguf_file, QTensor};
        use candle_core::{Device, Tensor};
        let d = tempfile::tempdir().unwrap();
        let mut good: Vec<f32> = (0..64).map(|i| i as f32 / 10.0).collect();
        let ok = Tensor::from_vec(good.clone(), (2, 32), &Device::Cpu).unwrap();
        good[37] = f32::NAN;
        let nan = Tensor::from_vec(good.clone(), (2, 32), &Device::Cpu).unwrap();
        let st = d.path().join("m.safetensors");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([
                (
                    "a.weight".to_string(),
                    ok.to_dtype(candle_core::DType::BF16).unwrap(),
                ),
                (
                    "b.weight".to_string(),
                    nan.to_dtype(candle_core::DType::F16).unwrap(),
                ),
            ]),
            &st,
        )
        .unwrap();
        assert_eq!(non_finite_in_safetensors(&[st]).unwrap(), vec!["b.weight"]);

        let gg = d.path().join("m.gguf");
        let q_ok = QTensor::quantize(&ok, GgmlDType::Q8_0).unwrap();
        // Quantising drops a NaN element; a damaged file has it in a block's scale.
        let q_bad = QTensor::quantize(&ok, GgmlDType::Q4_1).unwrap();
        let f_bad = QTensor::quantize(&nan, GgmlDType::F32).unwrap();
        let mut f = std::fs::File::create(&gg).unwrap();
        gguf_file::write(&mut f, &[], &[("a", &q_ok), ("q", &q_bad), ("z", &f_bad)]).unwrap();
        drop(f);
        assert_eq!(non_finite_in_gguf(&gg).unwrap(), vec!["z"]);
        let c = candle_core::quantized::gguf_file::Content::read(
            &mut std::fs::File::open(&gg).unwrap(),
        )
        .unwrap();
        let at = (c.tensor_data_offset + c.tensor_infos["q"].offset) as usize + 20 + 2;
        let mut bytes = std::fs::read(&gg).unwrap();
        bytes[at..at + 2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        std::fs::write(&gg, bytes).unwrap();
        assert_eq!(non_finite_in_gguf(&gg).unwrap(), vec!["q", "z"]);
    }
}

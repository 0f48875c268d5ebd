//! How each weight of a compressed model is stored on disk, and writing the model folder:
//! one `model.safetensors` in the forms [`distill_models::encoded`] reads back, next to the
//! source folder's config (updated) and tokenizer files.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use distill_models::encoded::{pack_bits, CODEBOOK, INDICES, LOW_RANK_U, LOW_RANK_V, SCALE};
use safetensors::Dtype;

use crate::error::CompressError;
pub use crate::model::tensors::Stored;
use crate::model::tensors::TensorMap;

fn io(path: &Path) -> impl Fn(String) -> CompressError + '_ {
    move |msg| CompressError::Io {
        path: path.to_path_buf(),
        msg,
    }
}

/// Raw little-endian bytes of a dense tensor in `dtype`.
fn dense_bytes(name: &str, t: &Tensor, dtype: DType) -> Result<(Dtype, Vec<u8>), CompressError> {
    let terr = |source| CompressError::Tensor {
        context: format!("writing `{name}`"),
        source,
    };
    let t = t
        .to_dtype(dtype)
        .and_then(|t| t.flatten_all())
        .map_err(terr)?;
    let (st, bytes) = match dtype {
        DType::F16 => (
            Dtype::F16,
            t.to_vec1::<half::f16>()
                .map_err(terr)?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            Dtype::BF16,
            t.to_vec1::<half::bf16>()
                .map_err(terr)?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        _ => (
            Dtype::F32,
            t.to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(terr)?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
    };
    Ok((st, bytes))
}

/// Every tensor of `map` as it is written: name → (dtype, shape, bytes). Dense tensors and
/// low-rank factors are converted to `dtype`.
pub fn encode_all(map: &TensorMap, dtype: DType) -> Result<Encoded, CompressError> {
    let mut out = BTreeMap::new();
    for (name, t) in &map.tensors {
        let shape = t.dims().to_vec();
        match map.stored.get(name) {
            None => {
                let (d, b) = dense_bytes(name, t, dtype)?;
                out.insert(name.clone(), (d, shape, b));
            }
            Some(Stored::Int8 { q, scales }) => {
                out.insert(
                    name.clone(),
                    (Dtype::I8, shape, q.iter().map(|&x| x as u8).collect()),
                );
                out.insert(
                    format!("{name}{SCALE}"),
                    (
                        Dtype::F32,
                        vec![scales.len(), 1],
                        scales.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ),
                );
            }
            Some(Stored::Shared {
                codebook,
                indices,
                bits,
                rows,
            }) => {
                let entry = if *rows == 1 {
                    (
                        Dtype::F32,
                        vec![codebook.len()],
                        codebook.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    )
                } else {
                    // Per-row codebooks are f16 (the values were rounded to it when chosen).
                    (
                        Dtype::F16,
                        vec![*rows, codebook.len() / rows],
                        codebook
                            .iter()
                            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                            .collect(),
                    )
                };
                out.insert(format!("{name}{CODEBOOK}"), entry);
                let packed = pack_bits(indices, *bits);
                out.insert(
                    format!("{name}{INDICES}"),
                    (Dtype::U8, vec![packed.len()], packed),
                );
            }
            Some(Stored::Gguf { data, .. }) => {
                // Only the GGUF sink writes these; counted here at their encoded size.
                out.insert(name.clone(), (Dtype::U8, vec![data.len()], data.clone()));
            }
            Some(Stored::LowRank { u, v }) => {
                for (suffix, f) in [(LOW_RANK_U, u), (LOW_RANK_V, v)] {
                    let n = format!("{name}{suffix}");
                    let (d, b) = dense_bytes(&n, f, dtype)?;
                    out.insert(n, (d, f.dims().to_vec(), b));
                }
            }
        }
    }
    Ok(out)
}

/// Writes `map` as one safetensors file at `path` (through a temporary file renamed into
/// place). Returns its size in bytes.
pub fn save_safetensors(map: &TensorMap, dtype: DType, path: &Path) -> Result<u64, CompressError> {
    let encoded = encode_all(map, dtype)?;
    distill_files::write_file_with(path, |tmp| {
        safetensors::tensor::serialize_to_file(views(&encoded, path)?, None, tmp)
            .map_err(|e| io(tmp)(e.to_string()))
    })?;
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

/// Exact size of the safetensors file [`save_safetensors`] would write.
pub fn serialized_bytes(map: &TensorMap, dtype: DType) -> Result<u64, CompressError> {
    let encoded = encode_all(map, dtype)?;
    let bytes = safetensors::tensor::serialize(views(&encoded, Path::new("(memory)"))?, None)
        .map_err(|e| io(Path::new("(memory)"))(e.to_string()))?;
    Ok(bytes.len() as u64)
}

type Encoded = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn views<'a>(
    encoded: &'a Encoded,
    path: &Path,
) -> Result<Vec<(String, safetensors::tensor::TensorView<'a>)>, CompressError> {
    encoded
        .iter()
        .map(|(name, (d, shape, bytes))| {
            safetensors::tensor::TensorView::new(*d, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| io(path)(format!("tensor `{name}`: {e}")))
        })
        .collect()
}

/// Writes a compressed model folder at `dir`: the files of `template` other than weights
/// (tokenizer, generation config, ...), `config` as `config.json`, and `map` as
/// `model.safetensors`. Built in a temporary sibling folder that replaces `dir` only when
/// complete. Returns the bytes of the weights file.
pub fn write_model_folder(
    dir: &Path,
    template: &Path,
    config: &serde_json::Value,
    map: &TensorMap,
    dtype: DType,
) -> Result<u64, CompressError> {
    if let Some(name) = map
        .stored
        .iter()
        .find_map(|(n, s)| matches!(s, Stored::Gguf { .. }).then_some(n))
    {
        return Err(CompressError::Unsupported(format!(
            "`{name}` is encoded as GGUF blocks, which only a GGUF file holds"
        )));
    }
    let fill = |tmp: &Path| -> Result<u64, CompressError> {
        let entries = std::fs::read_dir(template).map_err(|e| io(template)(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| io(template)(e.to_string()))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let is_weights = file.ends_with(".safetensors")
                || file.ends_with(".safetensors.index.json")
                || file.ends_with(".bin")
                || file == "config.json";
            if entry.path().is_file() && !is_weights {
                std::fs::copy(entry.path(), tmp.join(&file))
                    .map_err(|e| io(&entry.path())(e.to_string()))?;
            }
        }
        let cfg_path = tmp.join("config.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_string_pretty(config).expect("JSON value") + "\n",
        )
        .map_err(|e| io(&cfg_path)(e.to_string()))?;
        save_safetensors(map, dtype, &tmp.join("model.safetensors"))
    };
    distill_files::write_folder(dir, "model", fill)
}

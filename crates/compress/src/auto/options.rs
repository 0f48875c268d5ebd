//! Proxy 1 of the search: every encodable matrix in every candidate type, encoded as the final
//! artifact will be (GPTQ with the layer's Hessian, or the importance-weighted search), with its
//! relative output error on the calibration tokens.
//!
//! With the Hessian `H = Σ x xᵀ` of a matrix's input, `‖(W − Q) X‖² = Σ_rows d H dᵀ` (`d` a row
//! of `W − Q`) is exactly the error the matrix adds to its layer's output on the calibration
//! tokens, and GPTQ minimises it; dividing by `Σ_rows w H wᵀ` makes it comparable across
//! matrices. Without Hessians (`method: imatrix`) its diagonal `E[x²]` stands in.

use std::collections::BTreeMap;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::frontier::TensorOptions;
use crate::calibration::obs::{inverse_hessian, DAMP};
use crate::calibration::walk::{walk, CalibrationTokens, Collect, SiteStats};
use crate::error::CompressError;
use crate::formats::gguf::export::fitting_type;
use crate::framework::pass::Candidate;
use crate::model::tensors::values_f32;
use crate::passes::quantization::{encode_matrix, encodes_matrix, QuantMethod};

/// One type of one matrix, with its decoded values (for the calibration screen).
pub(super) struct Encoded {
    pub dtype: GgmlDType,
    pub dense: Vec<f32>,
}

/// Every matrix's options, and their decoded values by tensor name.
pub(super) struct Options {
    pub tensors: Vec<TensorOptions>,
    pub encoded: BTreeMap<String, Vec<Encoded>>,
}

fn bytes_of(t: GgmlDType, rows: usize, cols: usize) -> u64 {
    (rows * cols / t.block_size() * t.type_size()) as u64
}

fn terr(what: String) -> impl FnOnce(candle_core::Error) -> CompressError {
    move |source| CompressError::Tensor {
        context: what,
        source,
    }
}

/// `Σ_rows a H bᵀ` for `[rows, cols]` matrices `a`, `b` and `H` of `stats` (or its diagonal).
fn weighted(
    a: &[f32],
    b: &[f32],
    rows: usize,
    cols: usize,
    stats: &SiteStats,
) -> candle_core::Result<f64> {
    match &stats.hessian {
        Some(h) => {
            let h: Vec<f32> = h.iter().map(|&v| v as f32).collect();
            let h = Tensor::from_vec(h, (cols, cols), &Device::Cpu)?;
            let a = Tensor::from_slice(a, (rows, cols), &Device::Cpu)?;
            let b = Tensor::from_slice(b, (rows, cols), &Device::Cpu)?;
            Ok(a.matmul(&h)?.mul(&b)?.sum_all()?.to_scalar::<f32>()? as f64)
        }
        None => Ok(a
            .chunks(cols)
            .zip(b.chunks(cols))
            .flat_map(|(x, y)| {
                x.iter()
                    .zip(y)
                    .zip(&stats.sq_norms)
                    .map(|((&x, &y), &s)| x as f64 * y as f64 * s)
            })
            .sum()),
    }
}

/// Encodes every matrix of `c` in each of its types (`embeddings` for the token embeddings and
/// head, `layers` for the rest), on the statistics of one calibration walk over `tokens`.
pub(super) fn tensor_options(
    c: &Candidate,
    tokens: &CalibrationTokens,
    method: QuantMethod,
    layers: &[GgmlDType],
    embeddings: &[GgmlDType],
) -> Result<Options, CompressError> {
    let collect = match method {
        QuantMethod::Gptq => Collect::Hessians,
        _ => Collect::Norms,
    };
    let mut c = c.clone();
    let mut out = Options {
        tensors: vec![],
        encoded: BTreeMap::new(),
    };
    walk(&mut c, tokens, collect, &mut |stage, c| {
        for (name, stats) in &stage.matrices {
            if !encodes_matrix(name) || out.encoded.contains_key(name) {
                continue;
            }
            let t = &c.weights.tensors[name];
            let (rows, cols) = t.dims2().map_err(terr(format!("`{name}`")))?;
            let values = values_f32(name, t)?;
            let imp = stats.importance();
            let hinv = match method {
                QuantMethod::Gptq => Some(inverse_hessian(name, stats, DAMP)?),
                _ => None,
            };
            let signal = weighted(&values, &values, rows, cols, stats)
                .map_err(terr(format!("`{name}`: weighted norm")))?
                .max(f64::MIN_POSITIVE);
            let types = if name.contains("embed_tokens") || name == "lm_head.weight" {
                embeddings
            } else {
                layers
            };
            let mut opts = vec![];
            let mut encs: Vec<Encoded> = vec![];
            for &want in types {
                let used = fitting_type(want, cols);
                if encs.iter().any(|e| e.dtype == used) {
                    continue;
                }
                let (_, dense, _) = encode_matrix(used, &values, rows, cols, &imp, hinv.as_ref())
                    .map_err(terr(format!("encoding `{name}` as {used:?}")))?;
                let diff: Vec<f32> = values.iter().zip(&dense).map(|(w, q)| w - q).collect();
                let err = weighted(&diff, &diff, rows, cols, stats)
                    .map_err(terr(format!("`{name}`: error of {used:?}")))?;
                opts.push((used, bytes_of(used, rows, cols), err / signal));
                encs.push(Encoded { dtype: used, dense });
            }
            out.tensors.push(TensorOptions {
                name: name.clone(),
                options: opts,
            });
            out.encoded.insert(name.clone(), encs);
        }
        Ok(())
    })?;
    Ok(out)
}

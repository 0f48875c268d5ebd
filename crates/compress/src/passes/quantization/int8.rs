//! Post-training int8 quantisation with one symmetric scale per output channel (row): the
//! layout of compressed-tensors' `int8` weights (`weight` I8 + `weight_scale` `[out, 1]`).

use candle_core::Tensor;
use serde::Serialize;

use crate::error::CompressError;
use crate::formats::folder::Stored;
use crate::framework::pass::{Candidate, Context, Pass, PassReport};
use crate::model::tensors::{values_f32, TensorMap};

/// The int8 pass: every dense matrix, per output channel.
pub(crate) struct Int8;

impl Pass for Int8 {
    fn name(&self) -> &'static str {
        "quantize"
    }
    fn label(&self) -> String {
        "quantize int8".into()
    }
    fn encodes(&self) -> bool {
        true
    }
    fn apply(&self, c: &mut Candidate, _: &Context) -> Result<PassReport, CompressError> {
        let done = quantize_int8(&mut c.weights, |_| true)?;
        Ok(PassReport::note(format!(
            "{} matrices int8 per channel",
            done.len()
        )))
    }
}

/// What quantising one matrix did.
#[derive(Clone, Debug, Serialize)]
pub struct Quantised {
    pub tensor: String,
    /// Largest |w − dequantised w| in the matrix (at most half a scale step).
    pub max_abs_error: f64,
}

/// Row-wise symmetric int8: `scale = max|row| / 127`, `q = round(w / scale)`.
pub(crate) fn quantize_rows(values: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / cols.max(1));
    for row in values.chunks(cols.max(1)) {
        let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(
            row.iter()
                .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

/// Quantises every dense matrix of `map` that `select` names to int8 per output channel.
pub fn quantize_int8(
    map: &mut TensorMap,
    select: impl Fn(&str) -> bool,
) -> Result<Vec<Quantised>, CompressError> {
    let names = map.dense_matrices(select, "int8")?;
    let mut done = vec![];
    for name in names {
        let t = &map.tensors[&name];
        let terr = |source| CompressError::Tensor {
            context: format!("quantising `{name}` to int8"),
            source,
        };
        let (rows, cols) = t.dims2().map_err(terr)?;
        let values = values_f32(&name, t)?;
        let (q, scales) = quantize_rows(&values, cols);
        let decoded: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, &x)| x as f32 * scales[i / cols])
            .collect();
        let max_abs_error = values
            .iter()
            .zip(&decoded)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        let dense = Tensor::from_vec(decoded, (rows, cols), t.device()).map_err(terr)?;
        map.tensors.insert(name.clone(), dense);
        map.stored.insert(name.clone(), Stored::Int8 { q, scales });
        done.push(Quantised {
            tensor: name,
            max_abs_error,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_at_most_half_a_step_and_row_maxima_are_exact() {
        let values = vec![0.5f32, -1.0, 0.25, 0.0, 10.0, -3.0, 0.0, 0.0, 0.0];
        let (q, scales) = quantize_rows(&values, 3);
        assert_eq!(q[1], -127);
        assert_eq!(q[4], 127);
        assert_eq!(scales[2], 1.0, "an all-zero row gets a harmless scale");
        assert_eq!(&q[6..], &[0, 0, 0]);
        for (i, x) in values.iter().enumerate() {
            let back = q[i] as f32 * scales[i / 3];
            assert!((back - x).abs() <= scales[i / 3] / 2.0 + 1e-6);
        }
    }
}

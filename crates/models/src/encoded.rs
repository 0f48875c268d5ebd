//! Compressed encodings of a weight inside a safetensors file, and how to read them back.
//!
//! A compressed model stays one `model.safetensors` next to a standard `config.json`; a weight
//! `W` named `N` is stored in one of these forms (the tensor names say which):
//!
//! | form | tensors | value |
//! |---|---|---|
//! | dense | `N` (any float dtype) | `N` |
//! | int8 per output channel | `N` (I8, `[out, in]`), `N_scale` (F32, `[out, 1]`) | `N · N_scale` (the compressed-tensors layout) |
//! | k-means codebook | `N_codebook` (F32, `[2^b]`), `N_indices` (U8, `b` bits per value, little-endian bit order) | `codebook[index]` |
//! | k-means codebook per row | `N_codebook` (F16 or F32, `[out, 2^b]`), `N_indices` as above | `codebook[row][index]` |
//! | low rank | `N_u` (`[out, r]`), `N_v` (`[r, in]`) | `N_u · N_v` (a linear layer runs the two factors) |

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// Suffix of the per-row scales of an int8 weight.
pub const SCALE: &str = "_scale";
/// Suffix of the centroids of a k-means shared weight.
pub const CODEBOOK: &str = "_codebook";
/// Suffix of the packed centroid indices of a k-means shared weight.
pub const INDICES: &str = "_indices";
/// Suffix of the left (`[out, r]`) factor of a low-rank weight.
pub const LOW_RANK_U: &str = "_u";
/// Suffix of the right (`[r, in]`) factor of a low-rank weight.
pub const LOW_RANK_V: &str = "_v";

/// Packs `values` (each below `2^bits`) into bytes, `bits` per value, least significant first.
pub fn pack_bits(values: &[u16], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; (values.len() * bits as usize).div_ceil(8)];
    let mut pos = 0usize;
    for &v in values {
        for b in 0..bits {
            if (v >> b) & 1 == 1 {
                out[pos / 8] |= 1 << (pos % 8);
            }
            pos += 1;
        }
    }
    out
}

/// The inverse of [`pack_bits`]: `n` values of `bits` bits. `None` when `bytes` is too short.
pub fn unpack_bits(bytes: &[u8], bits: u32, n: usize) -> Option<Vec<u16>> {
    if bytes.len() < (n * bits as usize).div_ceil(8) {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    let mut pos = 0usize;
    for _ in 0..n {
        let mut v = 0u16;
        for b in 0..bits {
            if (bytes[pos / 8] >> (pos % 8)) & 1 == 1 {
                v |= 1 << b;
            }
            pos += 1;
        }
        out.push(v);
    }
    Some(out)
}

/// Decodes a k-means shared weight of `shape` from its codebook (one of `codebook_rows`
/// equal parts per row when that is the weight's row count, one for the matrix when it is 1)
/// and packed indices.
pub fn decode_shared(
    source_name: &str,
    name: &str,
    codebook: &[f32],
    codebook_rows: usize,
    packed: &[u8],
    shape: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let rows = shape.first().copied().unwrap_or(1);
    if codebook_rows != 1 && (codebook_rows != rows || shape.len() != 2) {
        return Err(ModelError::Format {
            path: source_name.into(),
            msg: format!(
                "`{name}{CODEBOOK}` has {codebook_rows} rows; expected 1 or the weight's {rows}"
            ),
        });
    }
    let k = codebook.len() / codebook_rows.max(1);
    if !k.is_power_of_two() || !(2..=256).contains(&k) {
        return Err(ModelError::Format {
            path: source_name.into(),
            msg: format!("`{name}{CODEBOOK}` has {k} centroids; expected 2^b with 1 <= b <= 8"),
        });
    }
    let bits = k.trailing_zeros();
    let n: usize = shape.iter().product();
    let idx = unpack_bits(packed, bits, n).ok_or_else(|| ModelError::Format {
        path: source_name.into(),
        msg: format!(
            "`{name}{INDICES}` holds {} bytes; {n} values of {bits} bits need {}",
            packed.len(),
            (n * bits as usize).div_ceil(8)
        ),
    })?;
    let cols = n / rows.max(1);
    let values: Vec<f32> = if codebook_rows == 1 {
        idx.iter().map(|&i| codebook[i as usize]).collect()
    } else {
        idx.iter()
            .enumerate()
            .map(|(j, &i)| codebook[(j / cols) * k + i as usize])
            .collect()
    };
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// Decodes an int8 weight `[out, in]` with one scale per output row.
pub fn decode_int8(
    source_name: &str,
    name: &str,
    q: &[u8],
    scales: &[f32],
    shape: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let rows = shape.first().copied().unwrap_or(1);
    if q.len() != n || scales.len() != rows || rows == 0 {
        return Err(ModelError::Format {
            path: source_name.into(),
            msg: format!(
                "int8 `{name}`: {} values and {} scales do not fit shape {shape:?}",
                q.len(),
                scales.len()
            ),
        });
    }
    let cols = n / rows;
    let values: Vec<f32> = q
        .iter()
        .enumerate()
        .map(|(i, &b)| (b as i8) as f32 * scales[i / cols])
        .collect();
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// Little-endian f32 values of a raw safetensors buffer of dtype `dtype`.
pub fn f32_values(
    source_name: &str,
    name: &str,
    dtype: safetensors::Dtype,
    bytes: &[u8],
) -> Result<Vec<f32>> {
    let t = match dtype {
        safetensors::Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(ModelError::Format {
                path: source_name.into(),
                msg: format!("`{name}` is {other:?}; expected F32, F16 or BF16"),
            })
        }
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_packing_round_trips_for_every_width() {
        for bits in 1..=8u32 {
            let values: Vec<u16> = (0..1001u32)
                .map(|i| ((i * 7919) % (1 << bits)) as u16)
                .collect();
            let packed = pack_bits(&values, bits);
            assert_eq!(packed.len(), (1001 * bits as usize).div_ceil(8));
            assert_eq!(unpack_bits(&packed, bits, values.len()).unwrap(), values);
        }
        assert!(unpack_bits(&[0u8; 3], 4, 7).is_none());
    }

    #[test]
    fn int8_and_codebook_decode_to_the_stored_values() {
        let d = Device::Cpu;
        let q = [1i8 as u8, (-2i8) as u8, 127, (-127i8) as u8];
        let t = decode_int8("f", "w", &q, &[0.5, 2.0], &[2, 2], &d).unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![0.5, -1.0], vec![254.0, -254.0]]
        );
        assert!(decode_int8("f", "w", &q, &[0.5], &[2, 2], &d).is_err());
        let packed = pack_bits(&[0, 3, 2, 1], 2);
        let t = decode_shared("f", "w", &[-1.0, 0.0, 1.0, 2.0], 1, &packed, &[4], &d).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![-1.0, 2.0, 1.0, 0.0]);
        let err = decode_shared("f", "w", &[0.0, 1.0, 2.0], 1, &packed, &[4], &d).unwrap_err();
        assert!(err.to_string().contains("w_codebook"), "{err}");
        // One codebook per row.
        let per_row = [-1.0, 0.0, 1.0, 2.0, 10.0, 20.0, 30.0, 40.0];
        let t = decode_shared("f", "w", &per_row, 2, &packed, &[2, 2], &d).unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![-1.0, 2.0], vec![30.0, 20.0]]
        );
        let err = decode_shared("f", "w", &per_row, 2, &packed, &[4, 1], &d).unwrap_err();
        assert!(err.to_string().contains("2 rows"), "{err}");
    }
}

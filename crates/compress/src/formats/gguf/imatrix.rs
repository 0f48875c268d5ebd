//! llama.cpp's importance-matrix file, legacy binary layout (`llama-imatrix` wrote it until the
//! GGUF-based one; `llama-quantize --imatrix` reads both):
//!
//! ```text
//! i32 n_entries
//! n_entries × { i32 name_len, name bytes, i32 ncall, i32 nval, f32 values[nval] }
//! i32 chunks, i32 dataset_len, dataset bytes
//! ```
//!
//! Names are GGUF tensor names (`blk.0.attn_q.weight`); `llama-quantize` divides the values by
//! `ncall`, so an entry holds the per-chunk mean `x²` of each input channel times `ncall`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::CompressError;

/// An importance matrix: per GGUF tensor name, the mean `x²` of each input channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Vec<f32>>,
    /// Calibration chunks (blocks) the statistics came from.
    pub chunks: u32,
    /// What the statistics were computed on.
    pub dataset: String,
}

fn io(path: &Path, msg: impl Into<String>) -> CompressError {
    CompressError::Io {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl Imatrix {
    /// Writes the file atomically (a temporary file renamed when complete).
    pub fn write(&self, path: &Path) -> Result<u64, CompressError> {
        let ncall = self.chunks.max(1) as i32;
        let mut out = Vec::new();
        let i32le = |out: &mut Vec<u8>, v: i32| out.extend_from_slice(&v.to_le_bytes());
        i32le(&mut out, self.entries.len() as i32);
        for (name, values) in &self.entries {
            i32le(&mut out, name.len() as i32);
            out.extend_from_slice(name.as_bytes());
            i32le(&mut out, ncall);
            i32le(&mut out, values.len() as i32);
            for v in values {
                out.extend_from_slice(&(v * ncall as f32).to_le_bytes());
            }
        }
        i32le(&mut out, self.chunks as i32);
        i32le(&mut out, self.dataset.len() as i32);
        out.extend_from_slice(self.dataset.as_bytes());
        distill_files::write_file(path, &out)?;
        Ok(out.len() as u64)
    }

    /// Reads a legacy imatrix file, refusing a truncated or inconsistent one by name.
    pub fn read(path: &Path) -> Result<Self, CompressError> {
        let data = std::fs::read(path).map_err(|e| io(path, e.to_string()))?;
        let mut r = Reader {
            data: &data,
            pos: 0,
            path,
        };
        let n = r.int("the entry count")?;
        if n < 1 {
            return Err(io(path, format!("holds {n} entries: not an imatrix file")));
        }
        let mut entries = BTreeMap::new();
        for i in 0..n {
            let len = r.int("a name length")?;
            if !(1..=4096).contains(&len) {
                return Err(io(
                    path,
                    format!("entry {i}: name length {len} is not plausible"),
                ));
            }
            let name = String::from_utf8(r.take(len as usize, "a name")?.to_vec())
                .map_err(|_| io(path, format!("entry {i}: the name is not UTF-8")))?;
            let ncall = r.int("ncall")?;
            let nval = r.int("nval")?;
            if nval < 1 {
                return Err(io(path, format!("entry `{name}` has {nval} values")));
            }
            let raw = r.take(4 * nval as usize, "values")?;
            let mut values: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            if ncall > 0 {
                for v in values.iter_mut() {
                    *v /= ncall as f32;
                }
            }
            if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(io(
                    path,
                    format!("entry `{name}` has negative or non-finite values"),
                ));
            }
            entries.insert(name, values);
        }
        let (mut chunks, mut dataset) = (0u32, String::new());
        if r.pos < data.len() {
            chunks = r.int("the chunk count")?.max(0) as u32;
            let len = r.int("the dataset name length")?.max(0) as usize;
            dataset = String::from_utf8_lossy(r.take(len, "the dataset name")?).into_owned();
        }
        Ok(Imatrix {
            entries,
            chunks,
            dataset,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CompressError> {
        let s = self.data.get(self.pos..self.pos + n).ok_or_else(|| {
            io(
                self.path,
                format!(
                    "truncated at byte {} while reading {what}: not a complete llama.cpp imatrix file",
                    self.pos
                ),
            )
        })?;
        self.pos += n;
        Ok(s)
    }

    fn int(&mut self, what: &str) -> Result<i32, CompressError> {
        Ok(i32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_imatrix_reads_back_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.imatrix");
        let m = Imatrix {
            entries: [
                ("blk.0.attn_q.weight".to_string(), vec![0.5, 2.0, 0.25]),
                ("blk.0.ffn_down.weight".to_string(), vec![1.0; 8]),
            ]
            .into(),
            chunks: 64,
            dataset: "moby-dick train".into(),
        };
        m.write(&p).unwrap();
        assert_eq!(Imatrix::read(&p).unwrap(), m);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 30]).unwrap();
        let e = Imatrix::read(&p).unwrap_err().to_string();
        assert!(e.contains("m.imatrix") && e.contains("truncated"), "{e}");
        std::fs::write(&p, [0u8; 4]).unwrap();
        let e = Imatrix::read(&p).unwrap_err().to_string();
        assert!(e.contains("0 entries"), "{e}");
    }
}

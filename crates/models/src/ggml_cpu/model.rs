//! A Llama-architecture GGUF run the way llama.cpp's CPU backend runs it (f32 KV cache, no
//! flash attention): same operations, same roundings, same summation orders.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::blocks::{quantize_row_q8, Blocks, Q8Block, QK};
use super::rope::{rotate, RopeCache};
use super::vec::{dot_f32, dot_lanes8, rms_norm, softmax_row, swiglu};
use crate::error::{ModelError, Result, TensorContext};
use crate::gguf::GgufFile;
use crate::llama::LlamaConfig;

/// How a matrix is stored in the GGUF.
enum Stored {
    Blocks(Blocks),
    /// Unquantised rows: multiplied in f32 with the activations as they are.
    F32(Vec<f32>),
}

/// A weight matrix kept as the GGUF stores it.
struct BlockMatrix {
    stored: Stored,
    rows: usize,
    cols: usize,
}

impl BlockMatrix {
    /// `x` (`n` rows of `cols`) times the matrix's transpose: `n` rows of `rows`, as ggml's
    /// `mul_mat` computes it. Block formats quantise each activation row once (`Q8_1` or
    /// `Q8_0`); f32 matrices take llamafile's `tinyBLAS` order where llama.cpp hands them to it
    /// (at least 2 rows of `x`, `cols % 8 == 0`, `rows % 4 == 0`) and `ggml_vec_dot_f32`'s
    /// otherwise.
    fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        let by_row: Vec<Vec<f32>> = match &self.stored {
            Stored::F32(w) => {
                let tiny_blas =
                    n >= 2 && self.cols.is_multiple_of(8) && self.rows.is_multiple_of(4);
                let dot = if tiny_blas { dot_lanes8 } else { dot_f32 };
                w.par_chunks_exact(self.cols)
                    .map(|row| x.chunks_exact(self.cols).map(|a| dot(row, a)).collect())
                    .collect()
            }
            Stored::Blocks(blocks) => {
                let act: Vec<Vec<Q8Block>> =
                    x.par_chunks_exact(self.cols).map(quantize_row_q8).collect();
                let per_row = self.cols / QK;
                (0..self.rows)
                    .into_par_iter()
                    .map(|r| act.iter().map(|a| blocks.dot(r, per_row, a)).collect())
                    .collect()
            }
        };
        let mut out = vec![0f32; n * self.rows];
        for (r, col) in by_row.iter().enumerate() {
            for (t, v) in col.iter().enumerate() {
                out[t * self.rows + r] = *v;
            }
        }
        out
    }

    /// Row `r` as f32 (`get_rows`).
    fn row_into(&self, r: usize, out: &mut [f32]) {
        match &self.stored {
            Stored::Blocks(b) => b.dequantize_row(r, out),
            Stored::F32(w) => out.copy_from_slice(&w[r * self.cols..(r + 1) * self.cols]),
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    q: BlockMatrix,
    k: BlockMatrix,
    v: BlockMatrix,
    o: BlockMatrix,
    ffn_norm: Vec<f32>,
    gate: BlockMatrix,
    up: BlockMatrix,
    down: BlockMatrix,
}

/// A Llama-architecture GGUF model computed with llama.cpp's CPU arithmetic (x86 AVX2 + FMA
/// kernels), so that its logits equal llama.cpp's bit for bit on the same file: weights stay
/// in their `Q4_1`/`Q8_0` blocks, activations are quantised before every product, attention
/// keeps llama.cpp's summation orders. Frozen: it has no backward pass.
pub struct GgmlLlama {
    cfg: LlamaConfig,
    source: String,
    /// Always the CPU: this path is llama.cpp's CPU arithmetic.
    device: Device,
    embed: BlockMatrix,
    output: Option<BlockMatrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    eps: f32,
    rope: RopeCache,
}

/// Output of [`GgmlLlama::forward`]: row-major `[sequence][position][…]` values.
pub struct GgmlOutput {
    /// Per sequence, `len × vocab` logits.
    pub logits: Vec<Vec<f32>>,
    /// Per sequence, the embedding output then every layer's output, the last after the final
    /// norm (`len × hidden` each); empty unless asked for.
    pub hidden: Vec<Vec<Vec<f32>>>,
}

/// A GGUF teacher with llama.cpp's arithmetic behind the common forward interface: every
/// sequence runs alone, so a padded batch is cut back to each row's real length first.
impl crate::model::Model for GgmlLlama {
    fn run(&self, input: &crate::model::Input) -> Result<crate::model::ModelOutput> {
        input.refuse_dropout(&self.source)?;
        let mut rows: Vec<Vec<u32>> = input
            .ids
            .to_vec2::<u32>()
            .context(|| "ggml forward input ids".into())?;
        if let Some(mask) = input.mask {
            for (row, len) in rows.iter_mut().zip(crate::model::mask_lengths(mask)?) {
                row.truncate(len);
            }
        }
        let (logits, hidden) = self.forward_tensors(&rows, input.hidden)?;
        let device = input.ids.device();
        let to_device = |t: Tensor| t.to_device(device).context(|| "ggml forward output".into());
        Ok(crate::model::ModelOutput {
            logits: to_device(logits)?,
            hidden_states: hidden
                .map(|h| h.into_iter().map(to_device).collect::<Result<Vec<_>>>())
                .transpose()?,
        })
    }
    fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

impl GgmlLlama {
    /// Loads every tensor of a `llama`-architecture GGUF. Matrices must be `Q4_1` or `Q8_0`
    /// (the formats whose llama.cpp kernels this path reproduces); norms `F32`.
    pub fn load(g: &GgufFile) -> Result<Self> {
        let source = g.path().display().to_string();
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture {
                source_name: source,
                found: arch.to_string(),
                supported: "llama (the ggml path; other architectures run through candle)".into(),
            });
        }
        let cfg = LlamaConfig::from_gguf(g)?;
        let hd = cfg.head_dim();
        let widths = [
            ("llama.embedding_length", cfg.hidden_size),
            ("llama.attention.head_count", cfg.num_attention_heads * hd),
            ("llama.feed_forward_length", cfg.intermediate_size),
        ];
        for (key, width) in widths {
            if width % QK != 0 {
                return Err(ModelError::Config {
                    source_name: source,
                    key: key.into(),
                    msg: format!(
                        "the ggml path quantises activations in blocks of {QK}; this width is {width}"
                    ),
                });
            }
        }
        let h = cfg.hidden_size;
        let q_out = cfg.num_attention_heads * hd;
        let kv_out = cfg.kv_heads() * hd;
        let ffn = cfg.intermediate_size;
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<BlockMatrix> {
            read_matrix(g, name, rows, cols)
        };
        let vector = |name: &str| -> Result<Vec<f32>> { read_norm(g, name, h) };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(&p("attn_norm"))?,
                q: matrix(&p("attn_q"), q_out, h)?,
                k: matrix(&p("attn_k"), kv_out, h)?,
                v: matrix(&p("attn_v"), kv_out, h)?,
                o: matrix(&p("attn_output"), h, q_out)?,
                ffn_norm: vector(&p("ffn_norm"))?,
                gate: matrix(&p("ffn_gate"), ffn, h)?,
                up: matrix(&p("ffn_up"), ffn, h)?,
                down: matrix(&p("ffn_down"), h, ffn)?,
            });
        }
        let output = if cfg.tie_word_embeddings {
            None
        } else {
            Some(matrix("output.weight", cfg.vocab_size, h)?)
        };
        Ok(Self {
            embed: matrix("token_embd.weight", cfg.vocab_size, h)?,
            output,
            norm: vector("output_norm.weight")?,
            layers,
            eps: cfg.rms_norm_eps as f32,
            rope: RopeCache::new(hd, cfg.rope_theta as f32),
            source,
            device: Device::Cpu,
            cfg,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Logits for every position of every sequence (each run alone, from position 0), and on
    /// request the hidden states.
    pub fn forward(&self, batch: &[Vec<u32>], want_hidden: bool) -> Result<GgmlOutput> {
        let mut out = GgmlOutput {
            logits: Vec::with_capacity(batch.len()),
            hidden: Vec::new(),
        };
        for ids in batch {
            let mut hidden = Vec::new();
            // transformers' convention, as `Llama::forward`: the embedding output, then every
            // layer's, the last one after the final norm.
            let logits = self.forward_traced(ids, &mut |name, v| {
                if !want_hidden {
                    return;
                }
                if name == "embd" || name.starts_with("l_out-") {
                    hidden.push(v.to_vec());
                } else if name == "result_norm" {
                    if let Some(last) = hidden.last_mut() {
                        *last = v.to_vec();
                    }
                }
            })?;
            out.logits.push(logits);
            if want_hidden {
                out.hidden.push(hidden);
            }
        }
        Ok(out)
    }

    /// [`Self::forward`] as tensors: logits `[batch, longest, vocab]` (padding positions are
    /// zero) and hidden states `[batch, longest, hidden]` per layer.
    pub fn forward_tensors(
        &self,
        batch: &[Vec<u32>],
        want_hidden: bool,
    ) -> Result<(Tensor, Option<Vec<Tensor>>)> {
        let out = self.forward(batch, want_hidden)?;
        let longest = batch.iter().map(Vec::len).max().unwrap_or(0);
        let pad = |rows: &[Vec<f32>], width: usize| -> Result<Tensor> {
            let mut all = vec![0f32; rows.len() * longest * width];
            for (b, r) in rows.iter().enumerate() {
                all[b * longest * width..b * longest * width + r.len()].copy_from_slice(r);
            }
            Tensor::from_vec(all, (rows.len(), longest, width), &Device::Cpu)
                .context(|| "ggml forward output".into())
        };
        let logits = pad(&out.logits, self.cfg.vocab_size)?;
        let hidden = if want_hidden {
            let layers = self.layers.len() + 1;
            let per_layer: Result<Vec<Tensor>> = (0..layers)
                .map(|l| {
                    let rows: Vec<Vec<f32>> = out.hidden.iter().map(|h| h[l].clone()).collect();
                    pad(&rows, self.cfg.hidden_size)
                })
                .collect();
            Some(per_layer?)
        } else {
            None
        };
        Ok((logits, hidden))
    }

    /// One sequence, calling `trace` with every intermediate under the name llama.cpp gives
    /// that node of its graph (`embd`, `attn_norm-0`, `kqv_out-0`, …, `l_out-29`, `result_norm`,
    /// `result_output`), `len × width` row-major: compare with a `cb_eval` dump of llama.cpp
    /// (`scripts/dump-llamacpp-tensors.py`, `examples/compare_llamacpp_dump.rs`) to find the
    /// first operation that differs on a new model. Returns the logits.
    pub fn forward_traced(
        &self,
        ids: &[u32],
        trace: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>> {
        let n = ids.len();
        if n == 0 {
            return Err(ModelError::Config {
                source_name: self.source.clone(),
                key: "input_ids".into(),
                msg: "an empty sequence: no tokens to run".into(),
            });
        }
        let h = self.cfg.hidden_size;
        let mut x = vec![0f32; n * h];
        for (t, &id) in ids.iter().enumerate() {
            if id as usize >= self.cfg.vocab_size {
                return Err(ModelError::Config {
                    source_name: self.source.clone(),
                    key: "input_ids".into(),
                    msg: format!(
                        "token id {id} at position {t} is outside the vocabulary ({})",
                        self.cfg.vocab_size
                    ),
                });
            }
            self.embed.row_into(id as usize, &mut x[t * h..(t + 1) * h]);
        }
        trace("embd", &x);
        let angles: Vec<Vec<(f32, f32)>> = (0..n).map(|p| self.rope.angles(p)).collect();
        let mut normed = vec![0f32; n * h];
        for (li, layer) in self.layers.iter().enumerate() {
            for (row, out) in x.chunks_exact(h).zip(normed.chunks_exact_mut(h)) {
                rms_norm(row, &layer.attn_norm, self.eps, out);
            }
            trace(&format!("attn_norm-{li}"), &normed);
            let attn = self.attention(layer, &normed, n, &angles);
            trace(&format!("kqv_out-{li}"), &attn);
            let o = layer.o.matmul(&attn, n);
            trace(&format!("attn_out-{li}"), &o);
            for (xv, ov) in x.iter_mut().zip(&o) {
                *xv += ov;
            }
            trace(&format!("ffn_inp-{li}"), &x);
            for (row, out) in x.chunks_exact(h).zip(normed.chunks_exact_mut(h)) {
                rms_norm(row, &layer.ffn_norm, self.eps, out);
            }
            trace(&format!("ffn_norm-{li}"), &normed);
            let gate = layer.gate.matmul(&normed, n);
            trace(&format!("ffn_gate-{li}"), &gate);
            let up = layer.up.matmul(&normed, n);
            trace(&format!("ffn_up-{li}"), &up);
            let mut act = vec![0f32; gate.len()];
            swiglu(&gate, &up, &mut act);
            trace(&format!("ffn_swiglu-{li}"), &act);
            let down = layer.down.matmul(&act, n);
            trace(&format!("ffn_out-{li}"), &down);
            for (xv, dv) in x.iter_mut().zip(&down) {
                *xv += dv;
            }
            trace(&format!("l_out-{li}"), &x);
        }
        for (row, out) in x.chunks_exact(h).zip(normed.chunks_exact_mut(h)) {
            rms_norm(row, &self.norm, self.eps, out);
        }
        trace("result_norm", &normed);
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let logits = head.matmul(&normed, n);
        trace("result_output", &logits);
        Ok(logits)
    }

    /// Causal self-attention over one sequence; returns `n × heads·head_dim`.
    fn attention(
        &self,
        layer: &Layer,
        x: &[f32],
        n: usize,
        angles: &[Vec<(f32, f32)>],
    ) -> Vec<f32> {
        let hd = self.cfg.head_dim();
        let heads = self.cfg.num_attention_heads;
        let kv_heads = self.cfg.kv_heads();
        let group = heads / kv_heads;
        let mut q = layer.q.matmul(x, n);
        let mut k = layer.k.matmul(x, n);
        let v = layer.v.matmul(x, n);
        for t in 0..n {
            for head in q[t * heads * hd..(t + 1) * heads * hd].chunks_exact_mut(hd) {
                rotate(&angles[t], head);
            }
            for head in k[t * kv_heads * hd..(t + 1) * kv_heads * hd].chunks_exact_mut(hd) {
                rotate(&angles[t], head);
            }
        }
        // V transposed per KV head: `[kv_head][dim][position]`, as llama.cpp's V cache.
        let mut vt = vec![0f32; kv_heads * hd * n];
        for t in 0..n {
            for c in 0..kv_heads * hd {
                vt[c * n + t] = v[t * kv_heads * hd + c];
            }
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; n * heads * hd];
        out.par_chunks_exact_mut(heads * hd)
            .enumerate()
            .for_each(|(t, out_t)| {
                let mut scores = vec![0f32; t + 1];
                let mut probs = vec![0f32; t + 1];
                for h in 0..heads {
                    let kvh = h / group;
                    let qh = &q[(t * heads + h) * hd..(t * heads + h + 1) * hd];
                    for (j, s) in scores.iter_mut().enumerate() {
                        let kj = &k[(j * kv_heads + kvh) * hd..(j * kv_heads + kvh + 1) * hd];
                        *s = dot_f32(kj, qh) * scale;
                    }
                    softmax_row(&scores, &mut probs);
                    for (d, o) in out_t[h * hd..(h + 1) * hd].iter_mut().enumerate() {
                        let row = &vt[(kvh * hd + d) * n..(kvh * hd + d) * n + t + 1];
                        *o = dot_lanes8(row, &probs);
                    }
                }
            });
        out
    }
}

fn read_matrix(g: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<BlockMatrix> {
    let source = g.path().display().to_string();
    let qt = g.qtensor(name, &Device::Cpu)?;
    let parse: fn(&[u8]) -> Stored = match qt.dtype() {
        GgmlDType::Q4_1 => |raw| Stored::Blocks(Blocks::q4_1(raw)),
        GgmlDType::Q8_0 => |raw| Stored::Blocks(Blocks::q8_0(raw)),
        GgmlDType::F32 => |raw| {
            Stored::F32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        },
        other => {
            return Err(ModelError::Config {
                source_name: source,
                key: name.into(),
                msg: format!(
                    "stored as {other:?}; the ggml path multiplies Q4_1, Q8_0 and F32 matrices (use `gguf_weights: quantized` or `dequantized` for other formats)"
                ),
            })
        }
    };
    let dims = qt.shape().dims().to_vec();
    if dims != [rows, cols] {
        return Err(ModelError::Shape {
            source_name: source,
            name: name.into(),
            expected: vec![rows, cols],
            got: dims,
        });
    }
    let data = qt
        .data()
        .context(|| format!("{source}: reading `{name}`"))?;
    Ok(BlockMatrix {
        stored: parse(&data),
        rows,
        cols,
    })
}

fn read_norm(g: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let source = g.path().display().to_string();
    let qt = g.qtensor(name, &Device::Cpu)?;
    if qt.dtype() != GgmlDType::F32 || qt.shape().elem_count() != len {
        return Err(ModelError::Shape {
            source_name: source,
            name: format!("{name} (F32)"),
            expected: vec![len],
            got: qt.shape().dims().to_vec(),
        });
    }
    qt.dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .context(|| format!("{source}: reading `{name}`"))
}

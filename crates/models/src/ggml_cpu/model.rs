//! A decoder GGUF (`llama` or `gemma3` architecture) run the way llama.cpp's CPU backend runs
//! it (f32 KV cache, no flash attention): same operations, same roundings, same summation
//! orders.

use candle_core::{Device, Tensor};

use super::attention::{attend, Heads};
use super::layer::{check_widths, load_layer, Layer};
use super::matrix::{read_matrix, read_norm, BlockMatrix};
use super::rope::{rotate, rotate_halves, RopeCache};
use super::vec::{geglu, rms_norm, swiglu};
use crate::error::{ModelError, Result, TensorContext};
use crate::family::Family;
use crate::gguf::GgufFile;
use crate::llama::LlamaConfig;

/// What differs between the graphs llama.cpp builds for the architectures this path runs.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Graph {
    /// The embedding output is multiplied by √hidden (Gemma).
    embed_scale: Option<f32>,
    /// Rotary pairs half a head apart (`NEOX`, Gemma) rather than adjacent (Llama's GGUF).
    rotate_halves: bool,
    /// q is multiplied by this after the rotary embedding (Gemma's `f_attention_scale`), and
    /// the scores by `score_scale`.
    query_scale: Option<f32>,
    score_scale: f32,
    /// GeGLU (Gemma) rather than SwiGLU.
    geglu: bool,
}

impl Graph {
    fn of(family: Family, cfg: &LlamaConfig) -> Self {
        let hd = cfg.head_dim() as f32;
        match family {
            Family::Gemma3 => Self {
                embed_scale: Some((cfg.hidden_size as f32).sqrt()),
                rotate_halves: true,
                query_scale: Some(
                    1.0 / (cfg.query_pre_attn_scalar.unwrap_or(hd as f64) as f32).sqrt(),
                ),
                score_scale: 1.0,
                geglu: true,
            },
            _ => Self {
                embed_scale: None,
                rotate_halves: false,
                query_scale: None,
                score_scale: 1.0 / hd.sqrt(),
                geglu: false,
            },
        }
    }
}

/// A layer and what its forward needs besides the residual stream.
struct LayerAt<'a> {
    index: usize,
    layer: &'a Layer,
    /// Per new position, the rotary angles of the layer's base.
    angles: &'a [Vec<(f32, f32)>],
    /// Positions already cached.
    past: usize,
    /// The layer's cached keys and values (`positions × kv_heads·head_dim` each).
    kv: &'a mut (Vec<f32>, Vec<f32>),
}

/// One sequence's keys and values, every layer, from position 0: what llama.cpp's KV cache
/// holds for it (in f32).
#[derive(Clone, Debug)]
pub struct SequenceCache {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
}

impl SequenceCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A decoder GGUF computed with llama.cpp's CPU arithmetic (x86 AVX2 + FMA kernels), so that
/// its logits equal llama.cpp's on the same file: weights stay in their stored blocks,
/// activations are quantised before every product, attention keeps llama.cpp's summation
/// orders. Frozen: it has no backward pass.
pub struct GgmlDecoder {
    cfg: LlamaConfig,
    graph: Graph,
    source: String,
    /// Always the CPU: this path is llama.cpp's CPU arithmetic.
    device: Device,
    embed: BlockMatrix,
    output: Option<BlockMatrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    eps: f32,
    /// The global rotary base's cache, then the local layers' where it differs.
    ropes: Vec<RopeCache>,
}

/// Output of [`GgmlDecoder::forward`]: row-major `[sequence][position][…]` values.
pub struct GgmlOutput {
    /// Per sequence, `len × vocab` logits.
    pub logits: Vec<Vec<f32>>,
    /// Per sequence, the embedding output then every layer's output, the last after the final
    /// norm (`len × hidden` each); empty unless asked for.
    pub hidden: Vec<Vec<Vec<f32>>>,
}

/// A GGUF teacher with llama.cpp's arithmetic behind the common forward interface: every
/// sequence runs alone, so a padded batch is cut back to each row's real length first.
impl crate::model::Model for GgmlDecoder {
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

/// The architectures whose llama.cpp graphs this path reproduces.
const ARCHITECTURES: &str = "llama, gemma3";

impl GgmlDecoder {
    /// Loads every tensor of a `llama` or `gemma3` GGUF. Matrices must be in a format whose
    /// llama.cpp kernel this path reproduces (`Q4_1`, `Q5_0`, `Q8_0`, `Q4_K`, `Q6_K`, `F32`);
    /// norms `F32`.
    pub fn load(g: &GgufFile) -> Result<Self> {
        let source = g.path().display().to_string();
        let arch = g.get_str("general.architecture")?;
        let family = match Family::from_gguf_architecture(arch) {
            Some(f @ (Family::Llama | Family::Gemma3)) => f,
            _ => {
                return Err(ModelError::UnsupportedArchitecture {
                    source_name: source,
                    found: arch.to_string(),
                    supported: format!(
                        "{ARCHITECTURES} (the ggml path; other architectures run through candle)"
                    ),
                })
            }
        };
        let cfg = LlamaConfig::from_gguf(g)?;
        check_widths(&cfg, arch, &source)?;
        let graph = Graph::of(family, &cfg);
        let hd = cfg.head_dim();
        let mut ropes = vec![RopeCache::new(hd, cfg.rope_theta as f32)];
        let local_rope = match cfg.rope_local_base_freq {
            Some(base) if base != cfg.rope_theta => {
                ropes.push(RopeCache::new(hd, base as f32));
                1
            }
            _ => 0,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| load_layer(g, &cfg, family, i, local_rope))
            .collect::<Result<Vec<_>>>()?;
        let h = cfg.hidden_size;
        let output = if cfg.tie_word_embeddings {
            None
        } else {
            Some(read_matrix(g, "output.weight", cfg.vocab_size, h)?)
        };
        Ok(Self {
            embed: read_matrix(g, "token_embd.weight", cfg.vocab_size, h)?,
            output,
            norm: read_norm(g, "output_norm.weight", h)?,
            layers,
            eps: cfg.rms_norm_eps as f32,
            ropes,
            graph,
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
        let first = if self.graph.embed_scale.is_some() {
            "inp_scaled"
        } else {
            "embd"
        };
        for ids in batch {
            let mut hidden = Vec::new();
            // transformers' convention, as `Llama::forward`: the (scaled) embedding output,
            // then every layer's, the last one after the final norm.
            let logits = self.forward_traced(ids, &mut |name, v| {
                if !want_hidden {
                    return;
                }
                if name == first || name.starts_with("l_out-") {
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
        let mut seq = self.new_sequence();
        self.extend(ids, &mut seq, trace)
    }

    /// An empty key/value cache for one sequence.
    pub fn new_sequence(&self) -> SequenceCache {
        SequenceCache {
            layers: vec![(Vec::new(), Vec::new()); self.layers.len()],
            len: 0,
        }
    }

    /// Runs `ids` after the positions `seq` holds, as llama.cpp evaluates one batch of a
    /// sequence, caches their keys and values, and returns their logits (`ids.len() × vocab`).
    pub fn extend(
        &self,
        ids: &[u32],
        seq: &mut SequenceCache,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) -> Result<Vec<f32>> {
        let n = ids.len();
        let past = seq.len;
        let mut x = self.embed_rows(ids)?;
        trace("embd", &x);
        if let Some(scale) = self.graph.embed_scale {
            for v in x.iter_mut() {
                *v *= scale;
            }
            trace("inp_scaled", &x);
        }
        let angles: Vec<Vec<Vec<(f32, f32)>>> = self
            .ropes
            .iter()
            .map(|r| (past..past + n).map(|p| r.angles(p)).collect())
            .collect();
        for (index, (layer, kv)) in self.layers.iter().zip(&mut seq.layers).enumerate() {
            let mut at = LayerAt {
                index,
                layer,
                angles: &angles[layer.rope],
                past,
                kv,
            };
            self.layer_forward(&mut at, &mut x, n, trace);
        }
        seq.len += n;
        let normed = self.norm_rows(&x, &self.norm);
        trace("result_norm", &normed);
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let logits = head.matmul(&normed, n);
        trace("result_output", &logits);
        Ok(logits)
    }

    /// The embedding rows of `ids` (`get_rows`), refusing ids outside the vocabulary.
    fn embed_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let bad = |msg: String| ModelError::Config {
            source_name: self.source.clone(),
            key: "input_ids".into(),
            msg,
        };
        if ids.is_empty() {
            return Err(bad("an empty sequence: no tokens to run".into()));
        }
        let h = self.cfg.hidden_size;
        let mut x = vec![0f32; ids.len() * h];
        for (t, &id) in ids.iter().enumerate() {
            if id as usize >= self.cfg.vocab_size {
                return Err(bad(format!(
                    "token id {id} at position {t} is outside the vocabulary ({})",
                    self.cfg.vocab_size
                )));
            }
            self.embed.row_into(id as usize, &mut x[t * h..(t + 1) * h]);
        }
        Ok(x)
    }

    /// RMS norm of every `w.len()`-wide row of `x`, times `w`.
    fn norm_rows(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for (row, o) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
            rms_norm(row, w, self.eps, o);
        }
        out
    }

    /// One decoder layer over the residual stream `x` (`n × hidden`), in place.
    fn layer_forward(
        &self,
        at: &mut LayerAt,
        x: &mut [f32],
        n: usize,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) {
        let (li, layer) = (at.index, at.layer);
        let attn = {
            let normed = self.norm_rows(x, &layer.attn_norm);
            trace(&format!("attn_norm-{li}"), &normed);
            self.attention(at, &normed, n, trace)
        };
        trace(&format!("kqv_out-{li}"), &attn);
        let o = layer.o.matmul(&attn, n);
        trace(&format!("attn_out-{li}"), &o);
        let post = (layer.attn_post_norm.as_deref(), "attn_post_norm");
        self.add_branch(x, o, post, li, trace);
        trace(&format!("ffn_inp-{li}"), x);
        trace(&format!("sa_out-{li}"), x);
        let normed = self.norm_rows(x, &layer.ffn_norm);
        trace(&format!("ffn_norm-{li}"), &normed);
        let gate = layer.gate.matmul(&normed, n);
        trace(&format!("ffn_gate-{li}"), &gate);
        let up = layer.up.matmul(&normed, n);
        trace(&format!("ffn_up-{li}"), &up);
        let mut act = vec![0f32; gate.len()];
        if self.graph.geglu {
            geglu(&gate, &up, &mut act);
            trace(&format!("ffn_geglu-{li}"), &act);
        } else {
            swiglu(&gate, &up, &mut act);
            trace(&format!("ffn_swiglu-{li}"), &act);
        }
        let down = layer.down.matmul(&act, n);
        trace(&format!("ffn_out-{li}"), &down);
        let post = (layer.ffn_post_norm.as_deref(), "ffn_post_norm");
        self.add_branch(x, down, post, li, trace);
        trace(&format!("l_out-{li}"), x);
    }

    /// Adds a branch's output to the residual stream `x`, through the branch's sandwich norm
    /// (traced under its name) where the family has one.
    fn add_branch(
        &self,
        x: &mut [f32],
        out: Vec<f32>,
        (post_norm, name): (Option<&[f32]>, &str),
        li: usize,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) {
        let out = match post_norm {
            Some(w) => {
                let normed = self.norm_rows(&out, w);
                trace(&format!("{name}-{li}"), &normed);
                normed
            }
            None => out,
        };
        for (xv, ov) in x.iter_mut().zip(&out) {
            *xv += ov;
        }
    }

    /// q, k, v of `x`, normed and rotated as the family does, then [`attend`].
    fn attention(
        &self,
        at: &mut LayerAt,
        x: &[f32],
        n: usize,
        trace: &mut dyn FnMut(&str, &[f32]),
    ) -> Vec<f32> {
        let (li, layer, angles) = (at.index, at.layer, at.angles);
        let hd = self.cfg.head_dim();
        let mut q = layer.q.matmul(x, n);
        trace(&format!("Qcur-{li}"), &q);
        let mut k = layer.k.matmul(x, n);
        trace(&format!("Kcur-{li}"), &k);
        let v = layer.v.matmul(x, n);
        trace(&format!("Vcur-{li}"), &v);
        if let Some(w) = &layer.q_norm {
            q = self.norm_rows(&q, w);
            trace(&format!("Qcur_normed-{li}"), &q);
        }
        if let Some(w) = &layer.k_norm {
            k = self.norm_rows(&k, w);
            trace(&format!("Kcur_normed-{li}"), &k);
        }
        let rotate_head = if self.graph.rotate_halves {
            rotate_halves
        } else {
            rotate
        };
        for (t, (qt, kt)) in q
            .chunks_exact_mut(self.cfg.num_attention_heads * hd)
            .zip(k.chunks_exact_mut(self.cfg.kv_heads() * hd))
            .enumerate()
        {
            qt.chunks_exact_mut(hd)
                .chain(kt.chunks_exact_mut(hd))
                .for_each(|head| rotate_head(&angles[t], head));
        }
        if let Some(scale) = self.graph.query_scale {
            for v in q.iter_mut() {
                *v *= scale;
            }
        }
        let shape = Heads {
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.kv_heads(),
            head_dim: hd,
            score_scale: self.graph.score_scale,
            window: layer.window,
        };
        at.kv.0.extend_from_slice(&k);
        at.kv.1.extend_from_slice(&v);
        attend(&shape, &q, &at.kv.0, &at.kv.1, at.past)
    }
}

//! Calibration statistics, the one core every data-aware method shares (Wanda, SparseGPT,
//! importance-matrix quantisation, GPTQ).
//!
//! A decoder (or a BERT encoder) is walked layer by layer over the calibration tokens (the
//! training split's first blocks or examples; never validation data). Each layer's linear inputs are observed on the output
//! of the layers before it *as already compressed*, as the reference implementations of
//! SparseGPT and GPTQ do, so a layer's method corrects for the error the earlier layers made.
//! Per input site (projections reading one input share it) the walk sums `‖x_j‖²` per input
//! channel (llama.cpp's importance matrix, Wanda's activation norm) and, when asked, the
//! Hessian `H = XᵀX` of the layer-wise reconstruction loss. Only one layer's statistics are held
//! at a time, so memory stays bounded by its widest Hessian.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use distill_models::{ArchConfig, Bert, LinearSite, Llama};

use crate::error::CompressError;
use crate::model::Candidate;

/// What to collect per input site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Collect {
    /// `Σ x_j²` per input channel only.
    Norms,
    /// The norms and the Hessian `XᵀX`.
    Hessians,
}

/// Statistics of one linear input over the calibration tokens.
#[derive(Clone, Debug)]
pub(crate) struct SiteStats {
    /// Input channels (the matrix's columns).
    pub columns: usize,
    /// Tokens observed.
    pub tokens: usize,
    /// `Σ x_j²` over the tokens, per input channel.
    pub sq_norms: Vec<f64>,
    /// `Σ |x_j|` over the tokens, per input channel.
    pub abs_sums: Vec<f64>,
    /// `Σ x xᵀ` over the tokens, row-major `[columns, columns]`, when collected.
    pub hessian: Option<Vec<f64>>,
}

impl SiteStats {
    fn new(columns: usize, collect: Collect) -> Self {
        Self {
            columns,
            tokens: 0,
            sq_norms: vec![0.0; columns],
            abs_sums: vec![0.0; columns],
            hessian: (collect == Collect::Hessians).then(|| vec![0.0; columns * columns]),
        }
    }

    fn add(&mut self, x: &Tensor) -> candle_core::Result<()> {
        let x = x.to_dtype(DType::F32)?;
        let x = x.reshape(((), x.dim(D::Minus1)?))?;
        let sq = x.sqr()?.sum(0)?.to_vec1::<f32>()?;
        for (a, b) in self.sq_norms.iter_mut().zip(sq) {
            *a += b as f64;
        }
        let abs = x.abs()?.sum(0)?.to_vec1::<f32>()?;
        for (a, b) in self.abs_sums.iter_mut().zip(abs) {
            *a += b as f64;
        }
        if let Some(h) = self.hessian.as_mut() {
            let xtx = x.t()?.matmul(&x)?.flatten_all()?.to_vec1::<f32>()?;
            for (a, b) in h.iter_mut().zip(xtx) {
                *a += b as f64;
            }
        }
        self.tokens += x.dim(0)?;
        Ok(())
    }

    /// Mean `x_j²` per input channel: llama.cpp's importance matrix for this input.
    pub fn importance(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.sq_norms.iter().map(|s| (s / n) as f32).collect()
    }

    /// `‖x_j‖₂` per input channel: Wanda's activation norm.
    pub fn norms(&self) -> Vec<f32> {
        self.sq_norms.iter().map(|s| s.sqrt() as f32).collect()
    }

    /// Mean `|x_j|` per input channel.
    pub fn mean_abs(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.abs_sums.iter().map(|s| (s / n) as f32).collect()
    }
}

/// One stage of the walk: the matrices it covers, each with the statistics of its input.
pub(crate) struct Stage<'a> {
    /// `layer N` or `head`.
    pub label: String,
    /// Tensor name and input statistics of every matrix of the stage.
    pub matrices: Vec<(String, &'a SiteStats)>,
    /// A layer's input sites, each with the matrices reading it (empty for the head).
    sites: Vec<(LinearSite, Vec<String>, &'a SiteStats)>,
}

impl Stage<'_> {
    /// The layer index of a `layer N` stage.
    pub fn layer(&self) -> Option<usize> {
        self.label.strip_prefix("layer ")?.parse().ok()
    }

    /// The statistics of `site` and the matrices reading it, in a layer stage.
    pub fn site(&self, site: LinearSite) -> Option<(&[String], &SiteStats)> {
        self.sites
            .iter()
            .find(|(s, _, _)| *s == site)
            .map(|(_, m, st)| (m.as_slice(), *st))
    }
}

/// What a walk saw besides the statistics it handed out.
#[derive(Clone, Debug, Default)]
pub struct Walked {
    /// The stages' labels in order.
    pub labels: Vec<String>,
    /// Per layer, its block influence `1 − mean cos(x_in, x_out)` over the calibration tokens
    /// (ShortGPT's layer importance; Minitron's depth metric): how much the layer, as compressed,
    /// turns the residual stream.
    pub block_influence: Vec<f64>,
}

/// Mean over tokens of the cosine between `a` and `b` (`[.., hidden]`), and the token count.
fn mean_cosine(a: &Tensor, b: &Tensor) -> candle_core::Result<(f64, usize)> {
    let h = a.dim(D::Minus1)?;
    let a = a.to_dtype(DType::F32)?.reshape(((), h))?;
    let b = b.to_dtype(DType::F32)?.reshape(((), h))?;
    let dot = (&a * &b)?.sum(1)?;
    let na = a.sqr()?.sum(1)?.sqrt()?;
    let nb = b.sqr()?.sum(1)?.sqrt()?;
    let cos = (dot / ((na * nb)? + 1e-12)?)?.to_vec1::<f32>()?;
    Ok((cos.iter().map(|&c| c as f64).sum(), cos.len()))
}

/// The token ids a calibration walk runs the model on (the training split's; never
/// validation data).
#[derive(Clone, Debug)]
pub enum CalibrationTokens {
    /// Unpadded blocks `[n, seq]` of a decoder's training text, run causally.
    Blocks(Tensor),
    /// An encoder's examples, each its ids without padding. The walk pads them a chunk at a
    /// time and keeps padding out of attention and out of every statistic.
    Examples(Vec<Vec<u32>>),
}

impl CalibrationTokens {
    /// Blocks or examples.
    pub fn len(&self) -> usize {
        match self {
            Self::Blocks(t) => t.dims().first().copied().unwrap_or(0),
            Self::Examples(e) => e.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `64 calibration blocks` or `256 calibration examples`, for report notes.
    pub fn describe(&self) -> String {
        match self {
            Self::Blocks(_) => format!("{} calibration blocks", self.len()),
            Self::Examples(_) => format!("{} calibration examples", self.len()),
        }
    }
}

/// Blocks handed to the model at once: large enough for efficient matrix products, small
/// enough that attention scores stay a few tens of MB.
const CHUNK: usize = 16;

/// One chunk of calibration inputs on its way through the layers.
struct Chunk {
    /// The current layer's input `[batch, seq, hidden]`.
    x: Tensor,
    /// `[batch, seq]`, 1 = token, 0 = padding (padded examples only).
    mask: Option<Tensor>,
    /// Indices of the real tokens among the `batch · seq` rows (padded examples only).
    rows: Option<Tensor>,
}

/// Rows of `x` (`[.., width]`) as a matrix, without padding rows.
fn token_rows(x: &Tensor, rows: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let x = x.reshape(((), x.dim(D::Minus1)?))?;
    match rows {
        Some(r) => x.index_select(r, 0),
        None => Ok(x),
    }
}

/// The model a walk runs, one layer at a time.
enum Walker {
    Llama(Box<Llama>),
    Bert(Box<Bert>),
}

impl Walker {
    fn load(c: &Candidate) -> Result<Self, CompressError> {
        Ok(match &c.arch {
            ArchConfig::Llama(cfg) => Walker::Llama(Box::new(Llama::load(cfg, &c.weights)?)),
            ArchConfig::Bert(cfg) => Walker::Bert(Box::new(Bert::load(cfg, &c.weights)?)),
        })
    }

    fn num_layers(&self) -> usize {
        match self {
            Walker::Llama(m) => m.num_layers(),
            Walker::Bert(m) => m.num_layers(),
        }
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor, CompressError> {
        Ok(match self {
            Walker::Llama(m) => m.embed_ids(ids)?,
            Walker::Bert(m) => m.embed_ids(ids)?,
        })
    }

    fn layer(
        &self,
        l: usize,
        chunk: &Chunk,
        observe: &mut dyn FnMut(LinearSite, &Tensor) -> candle_core::Result<()>,
    ) -> Result<Tensor, CompressError> {
        Ok(match self {
            Walker::Llama(m) => m.layer_forward(l, &chunk.x, observe)?,
            Walker::Bert(m) => m.layer_forward(l, &chunk.x, chunk.mask.as_ref(), observe)?,
        })
    }

    /// Tensor names of the matrices reading `site` in layer `l`.
    fn matrices(&self, l: usize, site: LinearSite) -> Vec<String> {
        match self {
            Walker::Llama(..) => site
                .projections()
                .iter()
                .map(|p| distill_models::family::layer_name(l, &format!("{p}.weight")))
                .collect(),
            Walker::Bert(m) => site
                .bert_projections()
                .iter()
                .map(|p| format!("{}encoder.layer.{l}.{p}.weight", m.prefix()))
                .collect(),
        }
    }
}

/// The chunks of `tokens` as the first layer's input.
fn chunks(walker: &Walker, tokens: &CalibrationTokens) -> Result<Vec<Chunk>, CompressError> {
    let terr = |what: &str| {
        let what = what.to_string();
        move |source| CompressError::Tensor {
            context: what,
            source,
        }
    };
    let mut out = vec![];
    match tokens {
        CalibrationTokens::Blocks(blocks) => {
            let (n, _) = blocks
                .dims2()
                .map_err(terr("calibration blocks must be [n, seq]"))?;
            for start in (0..n).step_by(CHUNK) {
                let ids = blocks
                    .narrow(0, start, CHUNK.min(n - start))
                    .map_err(terr("slicing calibration blocks"))?;
                out.push(Chunk {
                    x: walker.embed(&ids)?,
                    mask: None,
                    rows: None,
                });
            }
        }
        CalibrationTokens::Examples(examples) => {
            let pad = match walker {
                Walker::Bert(m) => m.config().pad_token_id as u32,
                Walker::Llama(..) => 0,
            };
            // Similar lengths together, so little of a chunk is padding.
            let mut order: Vec<&Vec<u32>> = examples.iter().filter(|e| !e.is_empty()).collect();
            order.sort_by_key(|e| e.len());
            for group in order.chunks(CHUNK) {
                let seq = group.iter().map(|e| e.len()).max().unwrap_or(0);
                let (mut ids, mut mask, mut rows) = (vec![], vec![], vec![]);
                for (b, e) in group.iter().enumerate() {
                    for t in 0..seq {
                        let real = t < e.len();
                        ids.push(if real { e[t] } else { pad });
                        mask.push(real as u32);
                        if real {
                            rows.push((b * seq + t) as u32);
                        }
                    }
                }
                let dev = &candle_core::Device::Cpu;
                let b = group.len();
                let ids = Tensor::from_vec(ids, (b, seq), dev).map_err(terr("calibration ids"))?;
                let n = rows.len();
                out.push(Chunk {
                    x: walker.embed(&ids)?,
                    mask: Some(
                        Tensor::from_vec(mask, (b, seq), dev).map_err(terr("calibration mask"))?,
                    ),
                    rows: Some(Tensor::from_vec(rows, n, dev).map_err(terr("calibration rows"))?),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(CompressError::Unsupported(
            "no calibration tokens: the training split is empty".into(),
        ));
    }
    Ok(out)
}

/// Walks the model of `c` (a Llama decoder or a BERT encoder) over the calibration `tokens`:
/// for each layer in order, collects its inputs' statistics on the current (already
/// compressed) earlier layers and calls `compress` with them, which may change that layer's
/// matrices in `c`; then runs the layer as compressed to make the next layer's input. A
/// decoder's last stage is the head (`lm_head.weight`, or the tied embedding matrix), with the
/// final norm's output as its input; an encoder's pooler and classifier read one vector per
/// example and stay outside the walk.
pub(crate) fn walk(
    c: &mut Candidate,
    tokens: &CalibrationTokens,
    collect: Collect,
    compress: &mut dyn FnMut(&Stage, &mut Candidate) -> Result<(), CompressError>,
) -> Result<Walked, CompressError> {
    let terr = |what: String| {
        move |source| CompressError::Tensor {
            context: what,
            source,
        }
    };
    let mut model = Walker::load(c)?;
    let mut xs = chunks(&model, tokens)?;
    let t0 = Instant::now();
    let mut labels = vec![];
    let mut block_influence = vec![];
    let layers = model.num_layers();
    for l in 0..layers {
        let mut stats: BTreeMap<LinearSite, SiteStats> = BTreeMap::new();
        for chunk in &xs {
            let mut err = None;
            model.layer(l, chunk, &mut |site, inp| {
                let x = token_rows(inp, chunk.rows.as_ref())?;
                let s = stats
                    .entry(site)
                    .or_insert_with(|| SiteStats::new(x.dim(1).unwrap_or(0), collect));
                s.add(&x).inspect_err(|e| err = Some(e.to_string()))
            })?;
            if let Some(e) = err {
                return Err(CompressError::Unsupported(format!(
                    "calibration statistics of layer {l}: {e}"
                )));
            }
        }
        let sites: Vec<_> = LinearSite::ALL
            .iter()
            .map(|site| (*site, model.matrices(l, *site), &stats[site]))
            .collect();
        let matrices = sites
            .iter()
            .flat_map(|(_, names, s)| names.iter().map(move |n| (n.clone(), *s)))
            .collect();
        let stage = Stage {
            label: format!("layer {l}"),
            matrices,
            sites,
        };
        compress(&stage, c)?;
        labels.push(stage.label);
        model = Walker::load(c)?;
        let (mut cos, mut tokens) = (0f64, 0usize);
        for chunk in xs.iter_mut() {
            let y = model.layer(l, chunk, &mut |_, _| Ok(()))?;
            let (s, n) = token_rows(&chunk.x, chunk.rows.as_ref())
                .and_then(|a| mean_cosine(&a, &token_rows(&y, chunk.rows.as_ref())?))
                .map_err(terr(format!("block influence of layer {l}")))?;
            cos += s;
            tokens += n;
            chunk.x = y;
        }
        block_influence.push(1.0 - cos / tokens.max(1) as f64);
        tracing::info!(
            stage = "calibrate",
            done = l + 1,
            of = layers,
            seconds = format!("{:.1}", t0.elapsed().as_secs_f64()),
            "layer {l} calibrated"
        );
    }
    let Walker::Llama(model) = &model else {
        return Ok(Walked {
            labels,
            block_influence,
        });
    };
    let mut head: Option<SiteStats> = None;
    for chunk in &xs {
        let h = model.final_norm(&chunk.x)?;
        let s = head.get_or_insert_with(|| SiteStats::new(model.config().hidden_size, collect));
        s.add(&h).map_err(terr("head input statistics".into()))?;
    }
    let head = head.expect("at least one calibration chunk");
    let name = if c.weights.tensors.contains_key("lm_head.weight") {
        "lm_head.weight"
    } else {
        "model.embed_tokens.weight"
    };
    let stage = Stage {
        label: "head".into(),
        matrices: vec![(name.to_string(), &head)],
        sites: vec![],
    };
    compress(&stage, c)?;
    labels.push(stage.label);
    Ok(Walked {
        labels,
        block_influence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tensors::TensorMap;
    use crate::test_util::{random_tensors, tiny_config};
    use candle_core::Device;

    fn candidate() -> Candidate {
        let cfg = tiny_config();
        Candidate {
            arch: ArchConfig::Llama(cfg.clone()),
            weights: TensorMap::from_tensors(random_tensors(&cfg), Device::Cpu),
        }
    }

    fn blocks(n: usize) -> CalibrationTokens {
        let ids: Vec<u32> = (0..n * 8).map(|i| (i * 7 % 50) as u32).collect();
        CalibrationTokens::Blocks(Tensor::from_vec(ids, (n, 8), &Device::Cpu).unwrap())
    }

    #[test]
    fn every_matrix_is_visited_once_with_statistics_of_its_input() {
        let mut c = candidate();
        let mut seen = vec![];
        let walked = walk(&mut c, &blocks(3), Collect::Hessians, &mut |s, _| {
            for (name, st) in &s.matrices {
                assert_eq!(st.tokens, 24, "{name}");
                let h = st.hessian.as_ref().unwrap();
                assert_eq!(h.len(), st.columns * st.columns);
                // The Hessian's diagonal is the squared norms.
                for j in 0..st.columns {
                    let d = h[j * st.columns + j];
                    assert!(
                        (d - st.sq_norms[j]).abs() <= 1e-4 * d.abs().max(1.0),
                        "{name}"
                    );
                }
                seen.push(name.clone());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(walked.labels.len(), 4);
        assert_eq!(walked.block_influence.len(), 3);
        assert!(walked
            .block_influence
            .iter()
            .all(|b| (0.0..=2.0).contains(b) && *b > 0.0));
        assert_eq!(seen.len(), 3 * 7 + 1);
        assert!(seen.contains(&"model.layers.2.mlp.down_proj.weight".to_string()));
        assert_eq!(seen.last().unwrap(), "model.embed_tokens.weight");
    }

    fn bert_candidate() -> Candidate {
        let cfg = crate::test_util::tiny_bert_config();
        Candidate {
            arch: ArchConfig::Bert(cfg.clone()),
            weights: TensorMap::from_tensors(crate::test_util::random_bert(&cfg), Device::Cpu),
        }
    }

    /// Tokens seen and `Σx²` per matrix of an encoder walk over `examples`.
    fn encoder_stats(c: &Candidate, examples: &[Vec<u32>]) -> BTreeMap<String, (usize, Vec<f64>)> {
        let mut c = c.clone();
        let mut out = BTreeMap::new();
        let tokens = CalibrationTokens::Examples(examples.to_vec());
        let walked = walk(&mut c, &tokens, Collect::Hessians, &mut |s, _| {
            for (name, st) in &s.matrices {
                out.insert(name.clone(), (st.tokens, st.sq_norms.clone()));
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(walked.labels, ["layer 0", "layer 1"]);
        assert!(walked.block_influence.iter().all(|b| *b > 0.0));
        out
    }

    #[test]
    fn an_encoder_walk_counts_real_tokens_only_so_padding_changes_nothing() {
        let c = bert_candidate();
        // Three lengths in one chunk: the walk pads the shorter two to 5.
        let examples = vec![vec![1u32, 5, 9, 2, 7], vec![3, 8, 1], vec![4, 4, 6, 2]];
        let together = encoder_stats(&c, &examples);
        assert_eq!(
            together.len(),
            2 * 6,
            "q, k, v, attention output, intermediate, output"
        );
        assert!(together.contains_key("bert.encoder.layer.1.intermediate.dense.weight"));
        // Each example alone, without any padding, summed.
        let mut alone: BTreeMap<String, (usize, Vec<f64>)> = BTreeMap::new();
        for e in &examples {
            for (n, (t, sq)) in encoder_stats(&c, std::slice::from_ref(e)) {
                let sum = alone.entry(n).or_insert((0, vec![0.0; sq.len()]));
                sum.0 += t;
                sum.1.iter_mut().zip(sq).for_each(|(a, b)| *a += b);
            }
        }
        for (n, (t, sq)) in &together {
            assert_eq!(*t, 12, "{n}: 12 real tokens");
            assert_eq!(alone[n].0, 12, "{n}");
            for (a, b) in sq.iter().zip(&alone[n].1) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{n}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn later_layers_see_the_earlier_layers_as_compressed() {
        // Zeroing layer 0's down projection changes what layer 1's attention input looks like.
        let base = candidate();
        let stats_of_layer1 = |zero: bool| {
            let mut c = base.clone();
            let mut out = vec![];
            walk(&mut c, &blocks(2), Collect::Norms, &mut |s, c| {
                if zero && s.label == "layer 0" {
                    let n = "model.layers.0.mlp.down_proj.weight";
                    let z = c.weights.tensors[n].zeros_like().unwrap();
                    c.weights.tensors.insert(n.into(), z);
                }
                if s.label == "layer 1" {
                    out = s.matrices[0].1.sq_norms.clone();
                }
                Ok(())
            })
            .unwrap();
            out
        };
        let (a, b) = (stats_of_layer1(false), stats_of_layer1(true));
        assert_ne!(a, b);
        assert_eq!(stats_of_layer1(false), a, "deterministic");
    }
}

//! Calibration statistics, the one core every data-aware method shares (Wanda, SparseGPT,
//! importance-matrix quantisation, GPTQ).
//!
//! A decoder is walked layer by layer over the calibration token blocks (the training split's
//! first blocks; never validation data). Each layer's linear inputs are observed on the output
//! of the layers before it *as already compressed*, as the reference implementations of
//! SparseGPT and GPTQ do, so a layer's method corrects for the error the earlier layers made.
//! Per input site (projections reading one input share it) the walk sums `‖x_j‖²` per input
//! channel (llama.cpp's importance matrix, Wanda's activation norm) and, when asked, the
//! Hessian `H = XᵀX` of the layer-wise reconstruction loss. Only one layer's statistics are held
//! at a time, so memory stays bounded by its widest Hessian.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use distill_models::{ArchConfig, LinearSite, Llama};

use crate::error::CompressError;
use crate::pass::Candidate;

/// What to collect per input site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collect {
    /// `Σ x_j²` per input channel only.
    Norms,
    /// The norms and the Hessian `XᵀX`.
    Hessians,
}

/// Statistics of one linear input over the calibration tokens.
#[derive(Clone, Debug)]
pub struct SiteStats {
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
pub struct Stage<'a> {
    /// `layer N` or `head`.
    pub label: String,
    /// Tensor name and input statistics of every matrix of the stage.
    pub matrices: Vec<(String, &'a SiteStats)>,
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

/// Blocks handed to the model at once: large enough for efficient matrix products, small
/// enough that attention scores stay a few tens of MB.
const CHUNK: usize = 16;

/// Walks the decoder `c` over the calibration token blocks `blocks` (`[n, seq]`, u32): for
/// each layer in order, collects its inputs' statistics on the current (already compressed)
/// earlier layers and calls `compress` with them, which may change that layer's matrices in
/// `c`; then runs the layer as compressed to make the next layer's input. The last stage is
/// the head (`lm_head.weight`, or the tied embedding matrix), with the final norm's output as
/// its input.
pub fn walk(
    c: &mut Candidate,
    blocks: &Tensor,
    collect: Collect,
    compress: &mut dyn FnMut(&Stage, &mut Candidate) -> Result<(), CompressError>,
) -> Result<Walked, CompressError> {
    let ArchConfig::Llama(cfg) = c.arch.clone() else {
        return Err(CompressError::Unsupported(
            "calibration statistics are implemented for Llama-family decoders; a BERT classifier is compressed by its weights".into(),
        ));
    };
    let terr = |what: String| {
        move |source| CompressError::Tensor {
            context: what,
            source,
        }
    };
    let (n, _) = blocks
        .dims2()
        .map_err(terr("calibration blocks must be [n, seq]".into()))?;
    if n == 0 {
        return Err(CompressError::Unsupported(
            "no calibration blocks: the training split is empty".into(),
        ));
    }
    let mut model = Llama::load(&cfg, &c.weights)?;
    let mut xs = vec![];
    for start in (0..n).step_by(CHUNK) {
        let ids = blocks
            .narrow(0, start, CHUNK.min(n - start))
            .map_err(terr("slicing calibration blocks".into()))?;
        xs.push(model.embed_ids(&ids)?);
    }
    let t0 = Instant::now();
    let mut labels = vec![];
    let mut block_influence = vec![];
    let layers = model.num_layers();
    for l in 0..layers {
        let mut stats: BTreeMap<LinearSite, SiteStats> = BTreeMap::new();
        for x in &xs {
            let mut err = None;
            model.layer_forward(l, x, &mut |site, inp| {
                let cols = inp.dim(D::Minus1)?;
                let s = stats
                    .entry(site)
                    .or_insert_with(|| SiteStats::new(cols, collect));
                s.add(inp).inspect_err(|e| err = Some(e.to_string()))
            })?;
            if let Some(e) = err {
                return Err(CompressError::Unsupported(format!(
                    "calibration statistics of layer {l}: {e}"
                )));
            }
        }
        let matrices = LinearSite::ALL
            .iter()
            .flat_map(|site| {
                let s = &stats[site];
                site.projections()
                    .iter()
                    .map(move |p| (format!("model.layers.{l}.{p}.weight"), s))
            })
            .collect();
        let stage = Stage {
            label: format!("layer {l}"),
            matrices,
        };
        compress(&stage, c)?;
        labels.push(stage.label);
        model = Llama::load(&cfg, &c.weights)?;
        let (mut cos, mut tokens) = (0f64, 0usize);
        for x in xs.iter_mut() {
            let y = model.layer_forward(l, x, &mut |_, _| Ok(()))?;
            let (s, n) =
                mean_cosine(x, &y).map_err(terr(format!("block influence of layer {l}")))?;
            cos += s;
            tokens += n;
            *x = y;
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
    let mut head: Option<SiteStats> = None;
    for x in &xs {
        let h = model.final_norm(x)?;
        let s = head.get_or_insert_with(|| SiteStats::new(cfg.hidden_size, collect));
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
    use crate::tensors::TensorMap;
    use crate::test_util::{random_tensors, tiny_config};
    use candle_core::Device;

    fn candidate() -> Candidate {
        let cfg = tiny_config();
        Candidate {
            arch: ArchConfig::Llama(cfg.clone()),
            weights: TensorMap::from_tensors(random_tensors(&cfg), Device::Cpu),
        }
    }

    fn blocks(n: usize) -> Tensor {
        let ids: Vec<u32> = (0..n * 8).map(|i| (i * 7 % 50) as u32).collect();
        Tensor::from_vec(ids, (n, 8), &Device::Cpu).unwrap()
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

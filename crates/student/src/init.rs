//! Student initialisation, one algorithm for every family: design the config from the
//! teacher's, then either cut the student out of the teacher (its layers, narrowed by
//! importance — the structured surgery of `distill_models::surgery`, the same cut pruning
//! uses) or draw seeded random weights; the result becomes trainable variables.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use distill_models::surgery::Keep;
use distill_models::{VarMapWeights, WeightSource};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::design::{evenly_spaced_layers, InitConfig, InitImportance, StudentConfig};
use crate::error::{cfg_err, Ctx, StudentError};

/// A trainable student: its config, its variables and the model built on them.
pub struct Student<C = distill_models::LlamaConfig, M = distill_models::Llama> {
    pub config: C,
    pub varmap: VarMap,
    pub model: M,
    /// For `from_teacher` init: the teacher layer each student layer started from.
    pub layer_map: Option<Vec<usize>>,
}

/// What differs between families when a student is built; the order of the steps is shared.
pub(crate) trait Family {
    type Config;
    type Model;
    /// The student's config from the teacher's and the shrink rules.
    fn derive(
        &self,
        teacher: &Self::Config,
        spec: &StudentConfig,
    ) -> Result<Self::Config, StudentError>;
    fn layers(&self, cfg: &Self::Config) -> usize;
    /// What the student keeps of the teacher, given the teacher layer of every student layer.
    fn keep(
        &self,
        teacher: &Self::Config,
        student: &Self::Config,
        src: &dyn WeightSource,
        layer_map: &[usize],
    ) -> Result<Keep, StudentError>;
    /// The student's tensors cut out of the teacher's.
    fn cut(
        &self,
        teacher: &Self::Config,
        src: &dyn WeightSource,
        keep: &Keep,
    ) -> Result<BTreeMap<String, Tensor>, StudentError>;
    /// Every tensor of a checkpoint of `cfg`, for random init.
    fn shapes(&self, cfg: &Self::Config) -> Vec<(String, Vec<usize>)>;
    /// The value a norm gain starts at (1, or 0 for a `1 + w` norm), `None` for a tensor
    /// that is not a gain.
    fn gain(&self, cfg: &Self::Config, name: &str) -> Option<f32>;
    /// Makes per-layer settings of `cfg` (the sliding-window pattern) those of the teacher
    /// layers each student layer starts from.
    fn adopt_layers(&self, _cfg: &mut Self::Config, _teacher: &Self::Config, _map: &[usize]) {}
    fn load(&self, cfg: &Self::Config, src: &dyn WeightSource)
        -> Result<Self::Model, StudentError>;
}

/// Designs the student of `family` from the teacher's config and `spec`, and initialises its
/// weights. `teacher` (dense reads of the teacher's tensors) is needed for `from_teacher` init.
pub(crate) fn build<F: Family>(
    family: &F,
    teacher_cfg: &F::Config,
    teacher: Option<&dyn WeightSource>,
    spec: &StudentConfig,
    device: &Device,
) -> Result<Student<F::Config, F::Model>, StudentError> {
    let mut cfg = family.derive(teacher_cfg, spec)?;
    let (init, layer_map) = match &spec.init {
        InitConfig::FromTeacher {
            importance: InitImportance::Activations,
            ..
        } => {
            return Err(cfg_err(
                "init.importance",
                "activations are measured on a run's data: a causal-LM run cuts such a student itself (a classification student ranks by weights for now)",
            ))
        }
        InitConfig::FromTeacher { layers, .. } => {
            let src = teacher
                .ok_or_else(|| cfg_err("init", "from_teacher needs the teacher's weights"))?;
            let map = layer_map(
                layers.as_deref(),
                family.layers(&cfg),
                family.layers(teacher_cfg),
            )?;
            family.adopt_layers(&mut cfg, teacher_cfg, &map);
            let keep = family.keep(teacher_cfg, &cfg, src, &map)?;
            (family.cut(teacher_cfg, src, &keep)?, Some(map))
        }
        InitConfig::Random { seed } => (
            seeded_init(family.shapes(&cfg), |n| family.gain(&cfg, n), *seed, device)?,
            None,
        ),
    };
    let varmap = varmap_from(init, device)?;
    let n_before = varmap.all_vars().len();
    let model = family.load(&cfg, &VarMapWeights::new(&varmap, DType::F32, device))?;
    debug_assert_eq!(
        n_before,
        varmap.all_vars().len(),
        "every variable was initialised"
    );
    Ok(Student {
        config: cfg,
        varmap,
        model,
        layer_map,
    })
}

/// A student of `family` whose weights were cut elsewhere (`tensors`, under the family's
/// names; `layer_map`: the teacher layer each student layer comes from).
pub(crate) fn from_tensors<F: Family>(
    family: &F,
    cfg: F::Config,
    tensors: BTreeMap<String, Tensor>,
    layer_map: Vec<usize>,
    device: &Device,
) -> Result<Student<F::Config, F::Model>, StudentError> {
    let varmap = varmap_from(tensors, device)?;
    let model = family.load(&cfg, &VarMapWeights::new(&varmap, DType::F32, device))?;
    Ok(Student {
        config: cfg,
        varmap,
        model,
        layer_map: Some(layer_map),
    })
}

/// The teacher layer each of `student` layers starts from: `listed`, checked, or evenly spaced.
pub(crate) fn layer_map(
    listed: Option<&[usize]>,
    student: usize,
    teacher: usize,
) -> Result<Vec<usize>, StudentError> {
    match listed {
        Some(l) => {
            if l.len() != student {
                return Err(cfg_err(
                    "init.layers",
                    format!(
                        "lists {} teacher layers for a student of {student} layers",
                        l.len()
                    ),
                ));
            }
            if let Some(bad) = l.iter().find(|&&x| x >= teacher) {
                return Err(cfg_err(
                    "init.layers",
                    format!("teacher layer {bad} does not exist (the teacher has {teacher})"),
                ));
            }
            Ok(l.to_vec())
        }
        None if student > teacher => Err(cfg_err(
            "layers",
            "more layers than the teacher: list init.layers or use init: random",
        )),
        None => Ok(evenly_spaced_layers(teacher, student)),
    }
}

/// `Some(sel)`, or `None` when `sel` is every index below `all` (nothing is cut).
pub(crate) fn unless_all(sel: Vec<u32>, all: usize) -> Option<Vec<u32>> {
    (sel.len() != all || sel.iter().enumerate().any(|(i, &x)| x as usize != i)).then_some(sel)
}

/// Trainable variables holding deep copies of `init` (f32, contiguous, on `device`).
pub(crate) fn varmap_from(
    init: BTreeMap<String, Tensor>,
    device: &Device,
) -> Result<VarMap, StudentError> {
    let varmap = VarMap::new();
    {
        let mut data = distill_models::weights::vars(&varmap);
        for (name, t) in init {
            let t = t
                .to_device(device)
                .and_then(|t| t.to_dtype(DType::F32))
                // Materialised contiguously for the optimiser, and a deep copy: a teacher
                // tensor that is itself a variable (a fine-tuned teacher) must not share
                // storage with the student's, or training the student would change the teacher.
                .and_then(|t| t.contiguous())
                .and_then(|t| t.copy())
                .ctx(|| format!("placing {name}"))?;
            data.insert(
                name.clone(),
                Var::from_tensor(&t).ctx(|| format!("variable {name}"))?,
            );
        }
    }
    Ok(varmap)
}

/// Norm gains at the value `gain` gives, zeros for biases, Normal(0, 0.02) for the rest, drawn
/// in `shapes` order from a ChaCha8 seeded with `seed`.
pub(crate) fn seeded_init(
    shapes: Vec<(String, Vec<usize>)>,
    gain: impl Fn(&str) -> Option<f32>,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>, StudentError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if let Some(g) = gain(&name) {
            vec![g; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| 0.02 * standard_normal(&mut rng)).collect()
        };
        out.insert(
            name.clone(),
            Tensor::from_vec(data, shape, device).ctx(|| name.clone())?,
        );
    }
    Ok(out)
}

/// Box–Muller on two uniforms.
fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_of_everything_cuts_nothing() {
        assert_eq!(unless_all(vec![0, 1, 2], 3), None);
        assert_eq!(unless_all(vec![0, 2], 3), Some(vec![0, 2]));
        assert_eq!(unless_all(vec![1, 2, 3], 3), Some(vec![1, 2, 3]));
    }
}

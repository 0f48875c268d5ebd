//! Student initialisation: from the teacher's layers (with width slicing), or random.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Init, VarMap};
use distill_models::{Llama, LlamaConfig, VarMapWeights, WeightSource};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::design::{derive_config, InitConfig, StudentConfig};
use crate::error::{cfg_err, Ctx, StudentError};

/// A trainable student.
pub struct Student {
    pub config: LlamaConfig,
    pub varmap: VarMap,
    pub model: Llama,
    /// For `from_teacher` init: the teacher layer each student layer started from.
    pub layer_map: Option<Vec<usize>>,
}

/// `n` layer indices out of `total`, evenly spaced and including the first and the last.
pub fn evenly_spaced_layers(total: usize, n: usize) -> Vec<usize> {
    if n == 1 {
        return vec![total - 1];
    }
    (0..n)
        .map(|i| ((i * (total - 1)) as f64 / (n - 1) as f64).round() as usize)
        .collect()
}

/// Designs the student from the teacher's config and `spec`, and initialises its weights.
/// `teacher` (dense reads of the teacher's tensors) is needed for `from_teacher` init.
pub fn build_student(
    teacher_cfg: &LlamaConfig,
    teacher: Option<&dyn WeightSource>,
    spec: &StudentConfig,
    device: &Device,
) -> Result<Student, StudentError> {
    let cfg = derive_config(teacher_cfg, spec)?;
    let (init, layer_map) = match &spec.init {
        InitConfig::FromTeacher { layers } => {
            let src = teacher
                .ok_or_else(|| cfg_err("init", "from_teacher needs the teacher's weights"))?;
            let map = layer_map(
                layers.as_deref(),
                cfg.num_hidden_layers,
                teacher_cfg.num_hidden_layers,
            )?;
            (from_teacher(teacher_cfg, &cfg, src, &map)?, Some(map))
        }
        InitConfig::Random { seed } => (random_init(&cfg, *seed, device)?, None),
    };
    let varmap = varmap_from(init, device)?;
    let n_before = varmap.all_vars().len();
    let model = Llama::load(&cfg, &VarMapWeights::new(&varmap, DType::F32, device))?;
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

/// Trainable variables holding deep copies of `init` (f32, on `device`).
pub(crate) fn varmap_from(
    init: BTreeMap<String, Tensor>,
    device: &Device,
) -> Result<VarMap, StudentError> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        for (name, t) in init {
            let t = t
                .to_device(device)
                .and_then(|t| t.to_dtype(DType::F32))
                // A deep copy: a teacher tensor that is itself a variable (a fine-tuned
                // teacher) must not share storage with the student's, or training the student
                // would change the teacher.
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

/// Normal(0, 0.02) matrices and embeddings, unit norms, zero biases, from a seeded ChaCha8.
fn random_init(
    cfg: &LlamaConfig,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>, StudentError> {
    seeded_init(
        cfg.tensor_shapes(),
        |n| n.ends_with("norm.weight"),
        seed,
        device,
    )
}

/// Ones for the norm gains `is_gain` names, zeros for biases, Normal(0, 0.02) for the rest,
/// drawn in `shapes` order from a ChaCha8 seeded with `seed`.
pub(crate) fn seeded_init(
    shapes: Vec<(String, Vec<usize>)>,
    is_gain: impl Fn(&str) -> bool,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>, StudentError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if is_gain(&name) {
            vec![1.0; n]
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

/// Indices of the `k` largest scores, in ascending index order (so slices keep the layout).
pub(crate) fn top_k(scores: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<u32> = idx[..k].iter().map(|&i| i as u32).collect();
    keep.sort();
    keep
}

pub(crate) fn norms(t: &Tensor, dim: usize) -> candle_core::Result<Vec<f32>> {
    // L2 norm of each slice along `dim` (the other dimension is reduced).
    let other = 1 - dim;
    t.sqr()?.sum(other)?.sqrt()?.to_vec1()
}

/// Copies the teacher's embeddings and mapped layers, slicing to the student's widths:
/// residual dimensions by embedding-column norm, FFN neurons by the product of their gate, up
/// and down norms, attention heads by keeping whole leading key/value groups.
fn from_teacher(
    t: &LlamaConfig,
    s: &LlamaConfig,
    src: &dyn WeightSource,
    layer_map: &[usize],
) -> Result<BTreeMap<String, Tensor>, StudentError> {
    let hd = t.head_dim();
    let (t_group, s_group) = (
        t.num_attention_heads / t.kv_heads(),
        s.num_attention_heads / s.kv_heads(),
    );
    if s.kv_heads() > t.kv_heads() || s_group > t_group {
        return Err(cfg_err(
            "init",
            format!(
                "from_teacher needs at most {} kv heads with at most {} query heads each (teacher), got {} × {}; use init: random",
                t.kv_heads(),
                t_group,
                s.kv_heads(),
                s_group
            ),
        ));
    }
    let dev = src.device().clone();
    let get = |name: &str, shape: &[usize]| src.tensor(name, shape, Init::Const(0.0));
    let idx = |v: &[u32]| Tensor::new(v, &dev).ctx(|| "index".into());
    let mut out = BTreeMap::new();

    let embed = get("model.embed_tokens.weight", &[t.vocab_size, t.hidden_size])?;
    let res: Vec<u32> = if s.hidden_size == t.hidden_size {
        (0..t.hidden_size as u32).collect()
    } else {
        top_k(
            &norms(&embed, 1).ctx(|| "embedding norms".into())?,
            s.hidden_size,
        )
    };
    let res_t = idx(&res)?;
    let cols = |w: &Tensor| w.index_select(&res_t, D::Minus1);
    out.insert(
        "model.embed_tokens.weight".into(),
        cols(&embed).ctx(|| "slicing embeddings".into())?,
    );
    let norm = get("model.norm.weight", &[t.hidden_size])?;
    out.insert(
        "model.norm.weight".into(),
        norm.index_select(&res_t, 0).ctx(|| "final norm".into())?,
    );
    if !s.tie_word_embeddings {
        let head = get("lm_head.weight", &[t.vocab_size, t.hidden_size])?;
        out.insert(
            "lm_head.weight".into(),
            cols(&head).ctx(|| "lm_head".into())?,
        );
    }
    // Query heads kept: the first `s_group` of each of the first `s.kv_heads()` groups.
    let q_heads: Vec<usize> = (0..s.kv_heads())
        .flat_map(|g| (0..s_group).map(move |j| g * t_group + j))
        .collect();
    let rows_of = |heads: &[usize]| -> Vec<u32> {
        heads
            .iter()
            .flat_map(|&h| (h * hd..(h + 1) * hd).map(|r| r as u32))
            .collect()
    };
    let q_rows = idx(&rows_of(&q_heads))?;
    let kv_rows = idx(&rows_of(&(0..s.kv_heads()).collect::<Vec<_>>()))?;
    let (tq, tkv) = (t.num_attention_heads * hd, t.kv_heads() * hd);
    let (h, f) = (t.hidden_size, t.intermediate_size);

    for (i, &j) in layer_map.iter().enumerate() {
        let (sp, tp) = (format!("model.layers.{i}"), format!("model.layers.{j}"));
        let ctx = || format!("initialising student layer {i} from teacher layer {j}");
        let mut put = |name: &str, t: Tensor| {
            out.insert(format!("{sp}.{name}"), t);
        };
        let q = get(&format!("{tp}.self_attn.q_proj.weight"), &[tq, h])?;
        let k = get(&format!("{tp}.self_attn.k_proj.weight"), &[tkv, h])?;
        let v = get(&format!("{tp}.self_attn.v_proj.weight"), &[tkv, h])?;
        let o = get(&format!("{tp}.self_attn.o_proj.weight"), &[h, tq])?;
        put(
            "self_attn.q_proj.weight",
            cols(&q.index_select(&q_rows, 0).ctx(ctx)?).ctx(ctx)?,
        );
        put(
            "self_attn.k_proj.weight",
            cols(&k.index_select(&kv_rows, 0).ctx(ctx)?).ctx(ctx)?,
        );
        put(
            "self_attn.v_proj.weight",
            cols(&v.index_select(&kv_rows, 0).ctx(ctx)?).ctx(ctx)?,
        );
        put(
            "self_attn.o_proj.weight",
            o.index_select(&res_t, 0)
                .ctx(ctx)?
                .index_select(&q_rows, 1)
                .ctx(ctx)?,
        );
        if t.qkv_bias() {
            for (name, rows, n) in [
                ("q_proj", &q_rows, tq),
                ("k_proj", &kv_rows, tkv),
                ("v_proj", &kv_rows, tkv),
            ] {
                let b = get(&format!("{tp}.self_attn.{name}.bias"), &[n])?;
                put(
                    &format!("self_attn.{name}.bias"),
                    b.index_select(rows, 0).ctx(ctx)?,
                );
            }
        }
        if t.attention_bias {
            let b = get(&format!("{tp}.self_attn.o_proj.bias"), &[h])?;
            put("self_attn.o_proj.bias", b.index_select(&res_t, 0).ctx(ctx)?);
        }
        let gate = get(&format!("{tp}.mlp.gate_proj.weight"), &[f, h])?;
        let up = get(&format!("{tp}.mlp.up_proj.weight"), &[f, h])?;
        let down = get(&format!("{tp}.mlp.down_proj.weight"), &[h, f])?;
        let neurons: Vec<u32> = if s.intermediate_size == f {
            (0..f as u32).collect()
        } else {
            let (g, u, d) = (
                norms(&gate, 0).ctx(ctx)?,
                norms(&up, 0).ctx(ctx)?,
                norms(&down, 1).ctx(ctx)?,
            );
            let score: Vec<f32> = (0..f).map(|n| g[n] * u[n] * d[n]).collect();
            top_k(&score, s.intermediate_size.min(f))
        };
        if neurons.len() != s.intermediate_size {
            return Err(cfg_err(
                "intermediate",
                format!("from_teacher needs at most the teacher's {f}"),
            ));
        }
        let n_t = idx(&neurons)?;
        put(
            "mlp.gate_proj.weight",
            cols(&gate.index_select(&n_t, 0).ctx(ctx)?).ctx(ctx)?,
        );
        put(
            "mlp.up_proj.weight",
            cols(&up.index_select(&n_t, 0).ctx(ctx)?).ctx(ctx)?,
        );
        put(
            "mlp.down_proj.weight",
            down.index_select(&res_t, 0)
                .ctx(ctx)?
                .index_select(&n_t, 1)
                .ctx(ctx)?,
        );
        if t.mlp_bias {
            let bg = get(&format!("{tp}.mlp.gate_proj.bias"), &[f])?;
            let bu = get(&format!("{tp}.mlp.up_proj.bias"), &[f])?;
            let bd = get(&format!("{tp}.mlp.down_proj.bias"), &[h])?;
            put("mlp.gate_proj.bias", bg.index_select(&n_t, 0).ctx(ctx)?);
            put("mlp.up_proj.bias", bu.index_select(&n_t, 0).ctx(ctx)?);
            put("mlp.down_proj.bias", bd.index_select(&res_t, 0).ctx(ctx)?);
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            let w = get(&format!("{tp}.{n}.weight"), &[h])?;
            put(&format!("{n}.weight"), w.index_select(&res_t, 0).ctx(ctx)?);
        }
    }
    // Every tensor must be materialised contiguously for the optimiser.
    for (name, t) in out.iter_mut() {
        *t = t.contiguous().ctx(|| name.clone())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_models::SafetensorsWeights;

    fn teacher_cfg() -> LlamaConfig {
        LlamaConfig::from_json(
            r#"{"model_type":"llama","vocab_size":50,"hidden_size":32,"intermediate_size":64,
                "num_hidden_layers":4,"num_attention_heads":4,"num_key_value_heads":2,"tie_word_embeddings":true,
                "max_position_embeddings":64}"#,
            "t",
        )
        .unwrap()
    }

    fn teacher_weights(cfg: &LlamaConfig, dir: &std::path::Path) -> SafetensorsWeights {
        let s = build_student(
            cfg,
            None,
            &StudentConfig {
                init: InitConfig::Random { seed: 3 },
                ..Default::default()
            },
            &Device::Cpu,
        )
        .unwrap();
        let p = dir.join("t.safetensors");
        s.varmap.save(&p).unwrap();
        SafetensorsWeights::open(&[p], DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn layers_are_evenly_spaced_with_both_ends() {
        assert_eq!(evenly_spaced_layers(30, 6), vec![0, 6, 12, 17, 23, 29]);
        assert_eq!(evenly_spaced_layers(12, 6), vec![0, 2, 4, 7, 9, 11]);
        assert_eq!(evenly_spaced_layers(4, 1), vec![3]);
    }

    #[test]
    fn random_init_is_seeded() {
        let cfg = teacher_cfg();
        let spec = |seed| StudentConfig {
            layers: Some(2),
            init: InitConfig::Random { seed },
            ..Default::default()
        };
        let a = build_student(&cfg, None, &spec(1), &Device::Cpu).unwrap();
        let b = build_student(&cfg, None, &spec(1), &Device::Cpu).unwrap();
        let c = build_student(&cfg, None, &spec(2), &Device::Cpu).unwrap();
        let w = |s: &Student| {
            s.varmap.data().lock().unwrap()["model.layers.1.mlp.up_proj.weight"]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
    }

    #[test]
    fn full_width_copy_reproduces_the_teacher_layers_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = teacher_cfg();
        let src = teacher_weights(&cfg, dir.path());
        // All four layers copied: the student is the teacher.
        let s = build_student(&cfg, Some(&src), &StudentConfig::default(), &Device::Cpu).unwrap();
        let teacher = Llama::load(&cfg, &src).unwrap();
        let ids = Tensor::new(&[[1u32, 7, 3, 9]], &Device::Cpu).unwrap();
        let a = teacher.forward(&ids, None, false).unwrap().logits;
        let b = s.model.forward(&ids, None, false).unwrap().logits;
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        // Listed layers are taken as listed.
        let spec = StudentConfig {
            layers: Some(2),
            init: InitConfig::FromTeacher {
                layers: Some(vec![3, 1]),
            },
            ..Default::default()
        };
        let s = build_student(&cfg, Some(&src), &spec, &Device::Cpu).unwrap();
        let got = s.varmap.data().lock().unwrap()["model.layers.0.mlp.down_proj.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = src
            .tensor(
                "model.layers.3.mlp.down_proj.weight",
                &[32, 64],
                Init::Const(0.0),
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got, want);
        assert_eq!(s.layer_map, Some(vec![3, 1]));
    }

    #[test]
    fn narrow_student_slices_widths_and_keeps_gqa() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = teacher_cfg();
        let src = teacher_weights(&cfg, dir.path());
        let spec = StudentConfig {
            layers: Some(2),
            hidden: Some(16),
            intermediate: Some(40),
            ..Default::default()
        };
        let s = build_student(&cfg, Some(&src), &spec, &Device::Cpu).unwrap();
        assert_eq!(
            (
                s.config.hidden_size,
                s.config.num_attention_heads,
                s.config.kv_heads()
            ),
            (16, 2, 1)
        );
        let data = s.varmap.data().lock().unwrap();
        assert_eq!(
            data["model.layers.1.self_attn.q_proj.weight"]
                .as_tensor()
                .dims(),
            &[16, 16]
        );
        assert_eq!(
            data["model.layers.1.self_attn.k_proj.weight"]
                .as_tensor()
                .dims(),
            &[8, 16]
        );
        assert_eq!(
            data["model.layers.1.mlp.down_proj.weight"]
                .as_tensor()
                .dims(),
            &[16, 40]
        );
        assert_eq!(data.len(), s.config.tensor_shapes().len());
        drop(data);
        let ids = Tensor::new(&[[1u32, 7, 3]], &Device::Cpu).unwrap();
        assert_eq!(
            s.model.forward(&ids, None, false).unwrap().logits.dims(),
            &[1, 3, 50]
        );

        let e = build_student(
            &cfg,
            Some(&src),
            &StudentConfig {
                init: InitConfig::FromTeacher {
                    layers: Some(vec![0, 9, 1, 2]),
                },
                ..Default::default()
            },
            &Device::Cpu,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("student.init.layers") && e.contains("teacher layer 9"),
            "{e}"
        );
    }
}

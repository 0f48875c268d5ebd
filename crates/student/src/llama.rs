//! Llama-family students: the shrink rules of [`crate::derive_config`], initialisation from the
//! teacher's layers (residual channels by embedding-column norm, FFN neurons by their weight
//! norms, the leading key/value groups with their leading query heads) or at random.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use distill_models::surgery::{self, top_k, Keep, LayerKeep};
use distill_models::{Llama, LlamaConfig, WeightSource};

use crate::design::{derive_config, StudentConfig};
use crate::error::{cfg_err, StudentError};
use crate::init::{build, unless_all, Family, Student};

/// A Llama-family student.
pub type LlamaStudent = Student<LlamaConfig, Llama>;

struct LlamaFamily;

impl Family for LlamaFamily {
    type Config = LlamaConfig;
    type Model = Llama;

    fn derive(&self, t: &LlamaConfig, spec: &StudentConfig) -> Result<LlamaConfig, StudentError> {
        derive_config(t, spec)
    }
    fn layers(&self, cfg: &LlamaConfig) -> usize {
        cfg.num_hidden_layers
    }
    fn keep(
        &self,
        t: &LlamaConfig,
        s: &LlamaConfig,
        src: &dyn WeightSource,
        layer_map: &[usize],
    ) -> Result<Keep, StudentError> {
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
        if s.hidden_size > t.hidden_size {
            return Err(cfg_err(
                "hidden",
                format!(
                    "from_teacher can only narrow the teacher's {}; use init: random for a wider student",
                    t.hidden_size
                ),
            ));
        }
        if s.intermediate_size > t.intermediate_size {
            return Err(cfg_err(
                "intermediate",
                format!(
                    "from_teacher needs at most the teacher's {}",
                    t.intermediate_size
                ),
            ));
        }
        let residual = (s.hidden_size != t.hidden_size)
            .then(|| {
                Ok::<_, StudentError>(top_k(
                    &surgery::llama::residual_norms(t, src)?,
                    s.hidden_size,
                ))
            })
            .transpose()?;
        // Query heads kept: the first `s_group` of each of the first `s.kv_heads()` groups.
        let heads: Vec<u32> = (0..s.kv_heads())
            .flat_map(|g| (0..s_group).map(move |j| (g * t_group + j) as u32))
            .collect();
        let kv: Vec<u32> = (0..s.kv_heads() as u32).collect();
        let mut per_layer = Vec::with_capacity(layer_map.len());
        for &j in layer_map {
            let neurons = (s.intermediate_size != t.intermediate_size)
                .then(|| {
                    Ok::<_, StudentError>(top_k(
                        &surgery::llama::neuron_norms(t, src, j)?,
                        s.intermediate_size,
                    ))
                })
                .transpose()?;
            per_layer.push(LayerKeep {
                heads: unless_all(heads.clone(), t.num_attention_heads),
                kv_heads: unless_all(kv.clone(), t.kv_heads()),
                neurons,
            });
        }
        Ok(Keep {
            layers: layer_map.to_vec(),
            residual,
            per_layer,
        })
    }
    fn cut(
        &self,
        t: &LlamaConfig,
        src: &dyn WeightSource,
        keep: &Keep,
    ) -> Result<BTreeMap<String, Tensor>, StudentError> {
        Ok(surgery::llama::cut(t, src, keep)?.1)
    }
    fn shapes(&self, cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        cfg.tensor_shapes()
    }
    fn gain(&self, cfg: &LlamaConfig, name: &str) -> Option<f32> {
        // A `1 + w` norm (Gemma) is the identity at w = 0.
        name.ends_with("norm.weight")
            .then(|| (1.0 - cfg.layout().norm_offset) as f32)
    }
    fn adopt_layers(&self, cfg: &mut LlamaConfig, teacher: &LlamaConfig, map: &[usize]) {
        cfg.layer_types = crate::design::layer_types_of(teacher, map);
    }
    fn load(&self, cfg: &LlamaConfig, src: &dyn WeightSource) -> Result<Llama, StudentError> {
        Ok(Llama::load(cfg, src)?)
    }
}

/// A student of `cfg` whose weights were cut from the teacher elsewhere (by activation
/// importance, on the run's data): `tensors` under Hugging Face names, `layer_map` the teacher
/// layer each student layer comes from.
pub fn student_from_tensors(
    cfg: LlamaConfig,
    tensors: BTreeMap<String, Tensor>,
    layer_map: Vec<usize>,
    device: &Device,
) -> Result<LlamaStudent, StudentError> {
    crate::init::from_tensors(&LlamaFamily, cfg, tensors, layer_map, device)
}

/// Designs the student from the teacher's config and `spec`, and initialises its weights.
/// `teacher` (dense reads of the teacher's tensors) is needed for `from_teacher` init.
pub fn build_student(
    teacher_cfg: &LlamaConfig,
    teacher: Option<&dyn WeightSource>,
    spec: &StudentConfig,
    device: &Device,
) -> Result<LlamaStudent, StudentError> {
    build(&LlamaFamily, teacher_cfg, teacher, spec, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::design::InitConfig;
    use candle_core::DType;
    use candle_nn::Init;
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
        let w = |s: &LlamaStudent| {
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
                importance: Default::default(),
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
                    importance: Default::default(),
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

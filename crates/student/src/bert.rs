//! BERT classifier students: shrink rules, initialisation from the teacher's layers (with
//! importance-based width slicing) or at random, and saving as `BertForSequenceClassification`.
//!
//! Width slicing follows the Llama student: residual dimensions by word-embedding column norm,
//! attention heads by the norms of their query/key/value rows and output columns, FFN neurons
//! by the product of their in and out norms. LayerNorms keep the sliced dimensions' gains, so
//! the statistics are over fewer dimensions than in the teacher: the start is approximate and
//! distillation does the rest.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use distill_models::surgery::{self, bert::Head, top_k, Keep, LayerKeep};
use distill_models::{BertClassifier, BertConfig, Pooling, WeightSource};
use serde_json::json;

use crate::design::StudentConfig;
use crate::error::{cfg_err, StudentError};
use crate::init::{build, unless_all, Family, Student};
use crate::save::{io, save_varmap, write_folder_atomically, write_json};

/// A trainable BERT classifier student.
pub type BertStudent = Student<BertConfig, BertClassifier>;

/// The student's `BertConfig` from the teacher's and the shrink rules. Unset sizes follow the
/// teacher; a narrower `hidden` keeps the teacher's head size.
pub fn derive_bert_config(t: &BertConfig, s: &StudentConfig) -> Result<BertConfig, StudentError> {
    if s.kv_heads.is_some() {
        return Err(cfg_err(
            "kv_heads",
            "BERT has no grouped key/value heads; remove it",
        ));
    }
    let hd = t.hidden_size / t.num_attention_heads;
    let layers = s.layers.unwrap_or(t.num_hidden_layers);
    if layers == 0 {
        return Err(cfg_err("layers", "must be at least 1"));
    }
    let hidden = s.hidden.unwrap_or(t.hidden_size);
    if hidden == 0 {
        return Err(cfg_err("hidden", "must be at least 1"));
    }
    let heads = match s.heads {
        Some(0) => return Err(cfg_err("heads", "must be at least 1")),
        Some(h) => h,
        None if hidden.is_multiple_of(hd) => hidden / hd,
        None => {
            return Err(cfg_err(
                "hidden",
                format!("{hidden} is not a multiple of the teacher's head size {hd}; set heads"),
            ))
        }
    };
    if !hidden.is_multiple_of(heads) {
        return Err(cfg_err(
            "heads",
            format!("{heads} heads do not divide hidden {hidden}"),
        ));
    }
    let intermediate = match s.intermediate {
        Some(0) => return Err(cfg_err("intermediate", "must be at least 1")),
        Some(f) => f,
        None => ((t.intermediate_size * hidden / t.hidden_size) / 32).max(1) * 32,
    };
    Ok(BertConfig {
        num_hidden_layers: layers,
        hidden_size: hidden,
        num_attention_heads: heads,
        intermediate_size: intermediate,
        ..t.clone()
    })
}

/// Designs the student and initialises its weights. `teacher` holds the teacher's encoder
/// (under `bert.` or at the top level), pooler and `classifier` head; needed for `from_teacher`.
pub fn build_bert_student(
    teacher_cfg: &BertConfig,
    teacher: Option<&dyn WeightSource>,
    spec: &StudentConfig,
    num_labels: usize,
    pooling: Pooling,
    device: &Device,
) -> Result<BertStudent, StudentError> {
    build(
        &BertFamily {
            num_labels,
            pooling,
        },
        teacher_cfg,
        teacher,
        spec,
        device,
    )
}

struct BertFamily {
    num_labels: usize,
    pooling: Pooling,
}

impl Family for BertFamily {
    type Config = BertConfig;
    type Model = BertClassifier;

    fn derive(&self, t: &BertConfig, spec: &StudentConfig) -> Result<BertConfig, StudentError> {
        derive_bert_config(t, spec)
    }
    fn layers(&self, cfg: &BertConfig) -> usize {
        cfg.num_hidden_layers
    }
    fn keep(
        &self,
        t: &BertConfig,
        s: &BertConfig,
        src: &dyn WeightSource,
        layer_map: &[usize],
    ) -> Result<Keep, StudentError> {
        let t_hd = t.hidden_size / t.num_attention_heads;
        let s_hd = s.hidden_size / s.num_attention_heads;
        if s_hd != t_hd || s.num_attention_heads > t.num_attention_heads {
            return Err(cfg_err(
                "init",
                format!(
                    "from_teacher keeps whole heads of size {t_hd} (at most {}); the student has {} heads of size {s_hd}: use init: random or hidden = heads × {t_hd}",
                    t.num_attention_heads, s.num_attention_heads
                ),
            ));
        }
        if s.hidden_size > t.hidden_size || s.intermediate_size > t.intermediate_size {
            return Err(cfg_err(
                "init",
                "from_teacher can only narrow the teacher; use init: random for a wider student",
            ));
        }
        let residual = (s.hidden_size != t.hidden_size)
            .then(|| {
                Ok::<_, StudentError>(top_k(
                    &surgery::bert::residual_norms(t, src)?,
                    s.hidden_size,
                ))
            })
            .transpose()?;
        let mut per_layer = Vec::with_capacity(layer_map.len());
        for &ti in layer_map {
            let heads = top_k(
                &surgery::bert::head_norms(t, src, ti)?,
                s.num_attention_heads,
            );
            let neurons = (s.intermediate_size != t.intermediate_size)
                .then(|| {
                    Ok::<_, StudentError>(top_k(
                        &surgery::bert::neuron_norms(t, src, ti)?,
                        s.intermediate_size,
                    ))
                })
                .transpose()?;
            per_layer.push(LayerKeep {
                heads: unless_all(heads, t.num_attention_heads),
                kv_heads: None,
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
        t: &BertConfig,
        src: &dyn WeightSource,
        keep: &Keep,
    ) -> Result<BTreeMap<String, Tensor>, StudentError> {
        let head = Head {
            num_labels: self.num_labels,
            pooler: self.pooling == Pooling::Cls,
        };
        Ok(surgery::bert::cut(t, src, keep, Some(head))?.1)
    }
    fn shapes(&self, cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
        bert_classifier_shapes(cfg, self.num_labels, self.pooling)
    }
    fn gain(&self, _cfg: &BertConfig, name: &str) -> Option<f32> {
        name.contains("LayerNorm.weight").then_some(1.0)
    }
    fn load(
        &self,
        cfg: &BertConfig,
        src: &dyn WeightSource,
    ) -> Result<BertClassifier, StudentError> {
        Ok(BertClassifier::load(
            cfg,
            src,
            self.num_labels,
            self.pooling,
        )?)
    }
}

/// Names and shapes of a `BertForSequenceClassification` checkpoint of `cfg`.
pub fn bert_classifier_shapes(
    cfg: &BertConfig,
    num_labels: usize,
    pooling: Pooling,
) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut v = vec![
        (
            "bert.embeddings.word_embeddings.weight".into(),
            vec![cfg.vocab_size, h],
        ),
        (
            "bert.embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
        ),
        (
            "bert.embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab_size, h],
        ),
        ("bert.embeddings.LayerNorm.weight".into(), vec![h]),
        ("bert.embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("bert.encoder.layer.{i}");
        for (n, shape) in [
            ("attention.self.query", vec![h, h]),
            ("attention.self.key", vec![h, h]),
            ("attention.self.value", vec![h, h]),
            ("attention.output.dense", vec![h, h]),
            ("intermediate.dense", vec![f, h]),
            ("output.dense", vec![h, f]),
        ] {
            v.push((format!("{p}.{n}.bias"), vec![shape[0]]));
            v.push((format!("{p}.{n}.weight"), shape));
        }
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            v.push((format!("{p}.{n}.weight"), vec![h]));
            v.push((format!("{p}.{n}.bias"), vec![h]));
        }
    }
    if pooling == Pooling::Cls {
        v.push(("bert.pooler.dense.weight".into(), vec![h, h]));
        v.push(("bert.pooler.dense.bias".into(), vec![h]));
    }
    v.push(("classifier.weight".into(), vec![num_labels, h]));
    v.push(("classifier.bias".into(), vec![num_labels]));
    v
}

/// What goes into an exported classifier folder.
pub struct BertExport<'a> {
    pub config: &'a BertConfig,
    pub varmap: &'a VarMap,
    pub labels: &'a [String],
    pub pooling: Pooling,
    pub tokenizer: &'a tokenizers::Tokenizer,
    /// Storage type of the weights (`F32`, `F16` or `BF16`).
    pub dtype: DType,
    /// Token limit the tokenizer config advertises.
    pub max_length: usize,
}

/// Saves a classifier as a `BertForSequenceClassification` folder (`config.json` with
/// `id2label`/`label2id`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`),
/// atomically. Returns the bytes of the weights file.
pub fn save_bert_classifier(dir: &Path, e: &BertExport) -> Result<u64, StudentError> {
    write_folder_atomically(dir, |tmp| {
        let mut cfg = e.config.clone();
        cfg.id2label = Some(
            e.labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        cfg.label2id = Some(
            e.labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i))
                .collect(),
        );
        let mut config = serde_json::to_value(&cfg).map_err(|x| io(dir)(x.to_string()))?;
        config["architectures"] = json!(["BertForSequenceClassification"]);
        config["problem_type"] = json!("single_label_classification");
        config["distill_pooling"] = json!(e.pooling.as_str());
        config["torch_dtype"] = json!(match e.dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        });
        write_json(tmp, "config.json", &config)?;
        write_json(
            tmp,
            "tokenizer_config.json",
            &json!({
                "tokenizer_class": "BertTokenizerFast",
                "model_max_length": e.max_length,
                "do_lower_case": true,
                "clean_up_tokenization_spaces": true,
            }),
        )?;
        let tok = tmp.join("tokenizer.json");
        e.tokenizer
            .save(&tok, false)
            .map_err(|x| io(&tok)(x.to_string()))?;
        save_varmap(tmp, e.varmap, e.dtype)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::design::InitConfig;
    use distill_models::SafetensorsWeights;

    fn teacher_cfg() -> BertConfig {
        BertConfig::from_json(
            r#"{"model_type":"bert","vocab_size":50,"hidden_size":32,"num_hidden_layers":4,
                "num_attention_heads":4,"intermediate_size":64,"max_position_embeddings":24}"#,
            "t",
        )
        .unwrap()
    }

    #[test]
    fn shrink_rules_keep_the_head_size() {
        let t = teacher_cfg();
        let s = derive_bert_config(
            &t,
            &StudentConfig {
                layers: Some(2),
                hidden: Some(16),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (
                s.num_hidden_layers,
                s.hidden_size,
                s.num_attention_heads,
                s.intermediate_size
            ),
            (2, 16, 2, 32)
        );
        let e = derive_bert_config(
            &t,
            &StudentConfig {
                kv_heads: Some(1),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("student.kv_heads"), "{e}");
        let e = derive_bert_config(
            &t,
            &StudentConfig {
                hidden: Some(12),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("student.hidden"), "{e}");
    }

    #[test]
    fn from_teacher_slices_and_a_full_width_copy_is_exact() {
        let dev = Device::Cpu;
        let t = teacher_cfg();
        // A random teacher with a head, saved and read back as a frozen source.
        let teacher = build_bert_student(
            &t,
            None,
            &StudentConfig {
                init: InitConfig::Random { seed: 3 },
                ..Default::default()
            },
            3,
            Pooling::Cls,
            &dev,
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let tok = tokenizers::Tokenizer::new(tokenizers::models::wordlevel::WordLevel::default());
        let labels = vec!["a".to_string(), "b".into(), "c".into()];
        save_bert_classifier(
            &d.path().join("t"),
            &BertExport {
                config: &t,
                varmap: &teacher.varmap,
                labels: &labels,
                pooling: Pooling::Cls,
                tokenizer: &tok,
                dtype: DType::F32,
                max_length: 24,
            },
        )
        .unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("t/config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["id2label"]["2"], "c");
        assert_eq!(cfg["label2id"]["b"], 1);
        assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
        let src =
            SafetensorsWeights::open(&[d.path().join("t/model.safetensors")], DType::F32, &dev)
                .unwrap();
        let ids = Tensor::new(&[[1u32, 5, 9, 2]], &dev).unwrap();
        let mask = Tensor::ones((1, 4), DType::U8, &dev).unwrap();
        let t_logits = teacher
            .model
            .forward(&ids, &mask, None, false)
            .unwrap()
            .logits;

        // Same shape, all layers: the student computes exactly what the teacher does.
        let same = build_bert_student(
            &t,
            Some(&src),
            &StudentConfig::default(),
            3,
            Pooling::Cls,
            &dev,
        )
        .unwrap();
        assert_eq!(same.layer_map, Some(vec![0, 1, 2, 3]));
        let s_logits = same.model.forward(&ids, &mask, None, false).unwrap().logits;
        let diff = (s_logits - &t_logits)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");

        // Narrower and shallower: shapes follow the student config.
        let small = build_bert_student(
            &t,
            Some(&src),
            &StudentConfig {
                layers: Some(2),
                hidden: Some(16),
                intermediate: Some(24),
                ..Default::default()
            },
            3,
            Pooling::Cls,
            &dev,
        )
        .unwrap();
        assert_eq!(small.layer_map, Some(vec![0, 3]));
        let shapes: BTreeMap<String, Vec<usize>> = small
            .varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
            .collect();
        let expected: BTreeMap<String, Vec<usize>> =
            bert_classifier_shapes(&small.config, 3, Pooling::Cls)
                .into_iter()
                .collect();
        assert_eq!(shapes, expected);
        assert_eq!(
            small
                .model
                .forward(&ids, &mask, None, false)
                .unwrap()
                .logits
                .dims(),
            &[1, 3]
        );
    }
}

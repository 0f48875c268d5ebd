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

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarMap};
use distill_models::{BertClassifier, BertConfig, Pooling, VarMapWeights, WeightSource};
use serde_json::json;

use crate::design::{InitConfig, StudentConfig};
use crate::error::{cfg_err, Ctx, StudentError};
use crate::init::{layer_map, norms, seeded_init, top_k, varmap_from};
use crate::save::{io, save_varmap, write_folder_atomically, write_json};

/// A trainable BERT classifier student.
pub struct BertStudent {
    pub config: BertConfig,
    pub varmap: VarMap,
    pub model: BertClassifier,
    /// For `from_teacher` init: the teacher layer each student layer started from.
    pub layer_map: Option<Vec<usize>>,
}

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
        None if hidden % hd == 0 => hidden / hd,
        None => {
            return Err(cfg_err(
                "hidden",
                format!("{hidden} is not a multiple of the teacher's head size {hd}; set heads"),
            ))
        }
    };
    if hidden % heads != 0 {
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
/// (under `teacher_prefix`), pooler and `classifier` head; needed for `from_teacher`.
pub fn build_bert_student(
    teacher_cfg: &BertConfig,
    teacher: Option<(&dyn WeightSource, &str)>,
    spec: &StudentConfig,
    num_labels: usize,
    pooling: Pooling,
    device: &Device,
) -> Result<BertStudent, StudentError> {
    let cfg = derive_bert_config(teacher_cfg, spec)?;
    let (init, layer_map) = match &spec.init {
        InitConfig::FromTeacher { layers } => {
            let (src, prefix) = teacher
                .ok_or_else(|| cfg_err("init", "from_teacher needs the teacher's weights"))?;
            let map = layer_map(
                layers.as_deref(),
                cfg.num_hidden_layers,
                teacher_cfg.num_hidden_layers,
            )?;
            let t = from_teacher(teacher_cfg, &cfg, src, prefix, &map, num_labels, pooling)?;
            (t, Some(map))
        }
        InitConfig::Random { seed } => {
            (random_init(&cfg, num_labels, pooling, *seed, device)?, None)
        }
    };
    let varmap = varmap_from(init, device)?;
    let model = BertClassifier::load(
        &cfg,
        &VarMapWeights::new(&varmap, DType::F32, device),
        num_labels,
        pooling,
        "bert.",
    )?;
    Ok(BertStudent {
        config: cfg,
        varmap,
        model,
        layer_map,
    })
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

fn random_init(
    cfg: &BertConfig,
    num_labels: usize,
    pooling: Pooling,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>, StudentError> {
    seeded_init(
        bert_classifier_shapes(cfg, num_labels, pooling),
        |n| n.contains("LayerNorm.weight"),
        seed,
        device,
    )
}

/// L2 norm of each row of a matrix.
fn row_norms(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    norms(t, 0)
}

fn from_teacher(
    t: &BertConfig,
    s: &BertConfig,
    src: &dyn WeightSource,
    tp: &str,
    layer_map: &[usize],
    num_labels: usize,
    pooling: Pooling,
) -> Result<BTreeMap<String, Tensor>, StudentError> {
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
    let dev = src.device().clone();
    let get = |name: &str, shape: &[usize]| src.tensor(name, shape, Init::Const(0.0));
    let idx = |v: &[u32]| Tensor::new(v, &dev).ctx(|| "index".into());
    let (th, tf) = (t.hidden_size, t.intermediate_size);
    let mut out = BTreeMap::new();

    let word = get(
        &format!("{tp}embeddings.word_embeddings.weight"),
        &[t.vocab_size, th],
    )?;
    let res: Vec<u32> = if s.hidden_size == th {
        (0..th as u32).collect()
    } else {
        let w = word.t().ctx(|| "embedding".into())?;
        top_k(
            &row_norms(&w).ctx(|| "embedding norms".into())?,
            s.hidden_size,
        )
    };
    let res_t = idx(&res)?;
    let cols = |w: &Tensor| w.index_select(&res_t, D::Minus1);
    let rows = |w: &Tensor| w.index_select(&res_t, 0);
    let mut put = |name: String, t: candle_core::Result<Tensor>| -> Result<(), StudentError> {
        let t = t.ctx(|| format!("slicing {name}"))?;
        out.insert(name, t);
        Ok(())
    };

    put("bert.embeddings.word_embeddings.weight".into(), cols(&word))?;
    for (n, len) in [
        ("position_embeddings", t.max_position_embeddings),
        ("token_type_embeddings", t.type_vocab_size),
    ] {
        let w = get(&format!("{tp}embeddings.{n}.weight"), &[len, th])?;
        put(format!("bert.embeddings.{n}.weight"), cols(&w))?;
    }
    for p in ["weight", "bias"] {
        let w = get(&format!("{tp}embeddings.LayerNorm.{p}"), &[th])?;
        put(format!("bert.embeddings.LayerNorm.{p}"), rows(&w))?;
    }

    for (si, &ti) in layer_map.iter().enumerate() {
        let tl = format!("{tp}encoder.layer.{ti}");
        let sl = format!("bert.encoder.layer.{si}");
        let w = |n: &str, shape: &[usize]| get(&format!("{tl}.{n}"), shape);
        let (q, k, v, o) = (
            w("attention.self.query.weight", &[th, th])?,
            w("attention.self.key.weight", &[th, th])?,
            w("attention.self.value.weight", &[th, th])?,
            w("attention.output.dense.weight", &[th, th])?,
        );
        // Head importance: norms of its q/k/v rows and o columns.
        let head_rows: Vec<u32> = {
            let (qn, kn, vn) = (
                row_norms(&q).ctx(|| tl.clone())?,
                row_norms(&k).ctx(|| tl.clone())?,
                row_norms(&v).ctx(|| tl.clone())?,
            );
            let on = row_norms(&o.t().ctx(|| tl.clone())?).ctx(|| tl.clone())?;
            let score: Vec<f32> = (0..t.num_attention_heads)
                .map(|hh| {
                    (hh * t_hd..(hh + 1) * t_hd)
                        .map(|r| qn[r] * qn[r] + kn[r] * kn[r] + vn[r] * vn[r] + on[r] * on[r])
                        .sum()
                })
                .collect();
            top_k(&score, s.num_attention_heads)
                .into_iter()
                .flat_map(|hh| (hh * t_hd as u32)..((hh + 1) * t_hd as u32))
                .collect()
        };
        let heads_t = idx(&head_rows)?;
        for (n, m) in [("query", &q), ("key", &k), ("value", &v)] {
            put(
                format!("{sl}.attention.self.{n}.weight"),
                m.index_select(&heads_t, 0).and_then(|x| cols(&x)),
            )?;
            let b = w(&format!("attention.self.{n}.bias"), &[th])?;
            put(
                format!("{sl}.attention.self.{n}.bias"),
                b.index_select(&heads_t, 0),
            )?;
        }
        put(
            format!("{sl}.attention.output.dense.weight"),
            rows(&o).and_then(|x| x.index_select(&heads_t, 1)),
        )?;
        let ffn_in = w("intermediate.dense.weight", &[tf, th])?;
        let ffn_out = w("output.dense.weight", &[th, tf])?;
        let neurons = if s.intermediate_size == tf {
            (0..tf as u32).collect()
        } else {
            let a = row_norms(&ffn_in).ctx(|| tl.clone())?;
            let b = row_norms(&ffn_out.t().ctx(|| tl.clone())?).ctx(|| tl.clone())?;
            let score: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
            top_k(&score, s.intermediate_size)
        };
        let neurons_t = idx(&neurons)?;
        put(
            format!("{sl}.intermediate.dense.weight"),
            ffn_in.index_select(&neurons_t, 0).and_then(|x| cols(&x)),
        )?;
        put(
            format!("{sl}.intermediate.dense.bias"),
            w("intermediate.dense.bias", &[tf])?.index_select(&neurons_t, 0),
        )?;
        put(
            format!("{sl}.output.dense.weight"),
            rows(&ffn_out).and_then(|x| x.index_select(&neurons_t, 1)),
        )?;
        for n in [
            "attention.output.dense.bias",
            "output.dense.bias",
            "attention.output.LayerNorm.weight",
            "attention.output.LayerNorm.bias",
            "output.LayerNorm.weight",
            "output.LayerNorm.bias",
        ] {
            put(format!("{sl}.{n}"), rows(&w(n, &[th])?))?;
        }
    }
    if pooling == Pooling::Cls {
        let pw = get(&format!("{tp}pooler.dense.weight"), &[th, th])?;
        put(
            "bert.pooler.dense.weight".into(),
            rows(&pw).and_then(|x| cols(&x)),
        )?;
        put(
            "bert.pooler.dense.bias".into(),
            rows(&get(&format!("{tp}pooler.dense.bias"), &[th])?),
        )?;
    }
    let cw = get("classifier.weight", &[num_labels, th])?;
    put("classifier.weight".into(), cols(&cw))?;
    put(
        "classifier.bias".into(),
        Ok(get("classifier.bias", &[num_labels])?),
    )?;
    Ok(out)
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
            Some((&src, "bert.")),
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
            Some((&src, "bert.")),
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

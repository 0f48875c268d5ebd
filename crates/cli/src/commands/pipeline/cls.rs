//! Compressing a BERT sequence classifier: quality is validation accuracy, speed is CPU
//! messages/s at batch 32, healing is the run's classification distillation (soft targets
//! from the uncompressed classifier) for a few epochs.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use candle_nn::Init;
use distill_compress::config::{DropLayers, NeuronImportance, Step};
use distill_compress::TensorMap;
use distill_models::{
    ArchConfig, BertClassifier, BertConfig, Pooling, SafetensorsWeights, VarMapWeights,
    WeightSource,
};
use distill_student::{build_bert_student, InitConfig, StudentConfig};
use distill_train::classify::{
    encode_examples, predict_logits, ClsDistillConfig, ClsTrainConfig, ClsTrainer, EncodedSet,
    KdTargets,
};
use distill_train::data::{load_labelled, split_stratified};

use super::{least_important, take_back, varmap_of, Measured, Subject};
use crate::commands::classify::{argmaxes, bert_prefix, load_classifier};
use crate::config::ClassifyConfig;

/// Training examples used to rank layers for dropping.
const CALIBRATION_EXAMPLES: usize = 256;

pub struct ClsSubject {
    name: String,
    folder: PathBuf,
    weight_files: Vec<PathBuf>,
    config: BertConfig,
    config_json: serde_json::Value,
    labels: Vec<String>,
    pooling: Pooling,
    pad: u32,
    dtype: DType,
    train: EncodedSet,
    valid: EncodedSet,
    train_cfg: ClsTrainConfig,
    distill: ClsDistillConfig,
    /// The uncompressed classifier's logits on the training split, for healing.
    soft_targets: OnceCell<Vec<Vec<f32>>>,
}

impl ClsSubject {
    /// The classifier folder `model` with the data split and objective of the run config.
    pub fn new(model: &str, run: &ClassifyConfig) -> anyhow::Result<Self> {
        let device = Device::Cpu;
        let loaded = load_classifier(model, &device)?;
        let source = distill_teacher::TeacherSource::parse(model)?;
        let resolved = distill_teacher::resolve(&source, &distill_teacher::HubOptions::from_env())?;
        let distill_teacher::Resolved::Folder(folder) = &resolved else {
            bail!("{model}: a classifier is a Hugging Face folder");
        };
        let config_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&folder.config_path)
                .with_context(|| folder.config_path.display().to_string())?,
        )?;
        let dtype = match config_json.get("torch_dtype").and_then(|d| d.as_str()) {
            Some("float16") => DType::F16,
            Some("bfloat16") => DType::BF16,
            _ => DType::F32,
        };
        let set = load_labelled(&run.data).context("data.source")?;
        if set.labels != loaded.labels {
            bail!(
                "{model}: its classes {:?} differ from the data's {:?}",
                loaded.labels,
                set.labels
            );
        }
        let split = split_stratified(
            &set,
            run.data.validation_fraction,
            run.data.test_fraction,
            run.data.seed,
            run.data.max_per_class,
        );
        let encode = |idx: &[usize]| {
            encode_examples(
                &loaded.tokenizer,
                &set.examples,
                idx,
                loaded.max_length,
                loaded.config.vocab_size,
            )
        };
        Ok(Self {
            name: model.to_string(),
            folder: folder.dir.clone(),
            weight_files: folder.weight_files.clone(),
            config: loaded.config.clone(),
            config_json,
            labels: loaded.labels.clone(),
            pooling: loaded.pooling,
            pad: loaded.pad_id,
            dtype,
            train: encode(&split.train)?,
            valid: encode(&split.validation)?,
            train_cfg: run.train.clone(),
            distill: run.distill.clone(),
            soft_targets: OnceCell::new(),
        })
    }

    fn bert(arch: &ArchConfig) -> anyhow::Result<&BertConfig> {
        match arch {
            ArchConfig::Bert(c) => Ok(c),
            ArchConfig::Llama(_) => bail!("expected a BERT config"),
        }
    }

    fn model(&self, cfg: &BertConfig, map: &TensorMap) -> anyhow::Result<BertClassifier> {
        Ok(BertClassifier::load(
            cfg,
            map,
            self.labels.len(),
            self.pooling,
            bert_prefix(map),
        )?)
    }

    /// Accuracy and messages/s on `set`, and the mean cross-entropy.
    fn score(&self, model: &BertClassifier, set: &EncodedSet) -> anyhow::Result<(Measured, f64)> {
        let t = Instant::now();
        let logits = predict_logits(model, set, 32, self.pad, &Device::Cpu)?;
        let secs = t.elapsed().as_secs_f64().max(1e-9);
        let mut ce = 0.0;
        for (row, &label) in logits.iter().zip(&set.labels) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            ce += (lse - row[label as usize]) as f64;
        }
        let correct = argmaxes(&logits)
            .iter()
            .zip(&set.labels)
            .filter(|(p, l)| p == l)
            .count();
        let n = set.len().max(1) as f64;
        Ok((
            Measured {
                quality: correct as f64 / n,
                speed: set.len() as f64 / secs,
            },
            ce / n,
        ))
    }

    /// The `n` layers whose removal (each alone) raises the calibration loss least.
    fn least_important_layers(
        &self,
        cfg: &BertConfig,
        map: &TensorMap,
        n: usize,
    ) -> anyhow::Result<(Vec<usize>, String)> {
        let layers = cfg.num_hidden_layers;
        let k = self.train.len().min(CALIBRATION_EXAMPLES);
        let calib = EncodedSet {
            ids: self.train.ids[..k].to_vec(),
            labels: self.train.labels[..k].to_vec(),
            truncated: 0,
        };
        least_important(layers, n, "calibration loss", |l| {
            let keep: Vec<usize> = (0..layers).filter(|&i| i != l).collect();
            let (c, m) = self.shrink(cfg, map, &keep, None, None)?;
            Ok(self.score(&self.model(&c, &m)?, &calib)?.1)
        })
    }

    /// Structured pruning through the student builder: keep layers `keep`, `heads` heads
    /// (and so a residual stream of heads × head size) and `ffn` neurons, each ranked by the
    /// norms of its weights.
    fn shrink(
        &self,
        cfg: &BertConfig,
        map: &TensorMap,
        keep: &[usize],
        heads: Option<usize>,
        ffn: Option<usize>,
    ) -> anyhow::Result<(BertConfig, TensorMap)> {
        let head_size = cfg.hidden_size / cfg.num_attention_heads;
        if let Some(h) = heads {
            if h > cfg.num_attention_heads {
                bail!(
                    "heads: {h} is more than the model's {}",
                    cfg.num_attention_heads
                );
            }
        }
        if let Some(f) = ffn {
            if f > cfg.intermediate_size {
                bail!(
                    "ffn_neurons: {f} is more than the model's {}",
                    cfg.intermediate_size
                );
            }
        }
        let spec = StudentConfig {
            layers: Some(keep.len()),
            hidden: heads.map(|h| h * head_size),
            intermediate: ffn.or(Some(cfg.intermediate_size)),
            heads,
            kv_heads: None,
            init: InitConfig::FromTeacher {
                layers: Some(keep.to_vec()),
            },
        };
        let s = build_bert_student(
            cfg,
            Some((map, bert_prefix(map))),
            &spec,
            self.labels.len(),
            self.pooling,
            &Device::Cpu,
        )?;
        let tensors = s
            .varmap
            .data()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        Ok((s.config, TensorMap::from_tensors(tensors, Device::Cpu)))
    }
}

impl Subject for ClsSubject {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn task(&self) -> &'static str {
        "classification"
    }
    fn base(&self) -> anyhow::Result<(ArchConfig, TensorMap)> {
        let src = SafetensorsWeights::open(&self.weight_files, DType::F32, &Device::Cpu)?;
        let mut tensors = std::collections::BTreeMap::new();
        for (name, _, shape) in src.tensor_infos() {
            if name.ends_with("position_ids") {
                continue;
            }
            tensors.insert(name.clone(), src.tensor(&name, &shape, Init::Const(0.0))?);
        }
        Ok((
            ArchConfig::Bert(self.config.clone()),
            TensorMap::from_tensors(tensors, Device::Cpu),
        ))
    }
    fn base_bytes(&self) -> u64 {
        distill_models::weights::bytes_on_disk(&self.weight_files)
    }
    fn dense_dtype(&self) -> DType {
        self.dtype
    }
    fn measure(&self, arch: &ArchConfig, map: &TensorMap) -> anyhow::Result<Measured> {
        Ok(self
            .score(&self.model(Self::bert(arch)?, map)?, &self.valid)?
            .0)
    }
    fn prune(
        &self,
        arch: &mut ArchConfig,
        map: &mut TensorMap,
        step: &Step,
    ) -> anyhow::Result<Vec<String>> {
        let Step::Prune {
            drop_layers,
            heads,
            ffn_neurons,
            importance,
            ..
        } = step
        else {
            bail!("not a prune step")
        };
        if *importance == NeuronImportance::Activations {
            bail!("importance: activations is implemented for Llama-family decoders; a BERT classifier's neurons are ranked by weights");
        }
        let cfg = Self::bert(arch)?.clone();
        let mut notes = vec![];
        if drop_layers.is_some() || heads.is_some() || ffn_neurons.is_some() {
            let n = cfg.num_hidden_layers;
            let drop = match drop_layers {
                None => vec![],
                Some(DropLayers::These(l)) => {
                    if let Some(bad) = l.iter().find(|&&i| i >= n) {
                        bail!("drop_layers: layer {bad} does not exist (the model has {n})");
                    }
                    l.clone()
                }
                Some(DropLayers::LeastImportant { least_important }) => {
                    let (l, note) = self.least_important_layers(&cfg, map, *least_important)?;
                    notes.push(note);
                    l
                }
            };
            let keep: Vec<usize> = (0..n).filter(|i| !drop.contains(i)).collect();
            if keep.is_empty() {
                bail!("drop_layers: dropping every layer leaves no model");
            }
            let (c, m) = self.shrink(&cfg, map, &keep, *heads, *ffn_neurons)?;
            *arch = ArchConfig::Bert(c);
            *map = m;
        }
        Ok(notes)
    }
    fn heal(
        &self,
        arch: &ArchConfig,
        map: &mut TensorMap,
        step: &Step,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let Step::Heal { epochs, lr, .. } = step else {
            bail!("not a heal step")
        };
        let cfg = Self::bert(arch)?;
        if self.soft_targets.get().is_none() {
            let (barch, bmap) = self.base()?;
            let teacher = self.model(Self::bert(&barch)?, &bmap)?;
            let logits = predict_logits(&teacher, &self.train, 32, self.pad, &Device::Cpu)?;
            let _ = self.soft_targets.set(logits);
        }
        let targets = self.soft_targets.get().expect("set above");
        let vm = varmap_of(map)?;
        let pre = bert_prefix(map);
        let model = BertClassifier::load(
            cfg,
            &VarMapWeights::new(&vm, DType::F32, &Device::Cpu),
            self.labels.len(),
            self.pooling,
            pre,
        )?;
        let train_cfg = ClsTrainConfig {
            epochs: *epochs,
            lr: lr.unwrap_or(self.train_cfg.lr),
            freeze_embeddings: false,
            freeze_layers: vec![],
            ..self.train_cfg.clone()
        };
        std::fs::create_dir_all(dir)?;
        let out = ClsTrainer {
            cfg: &train_cfg,
            stage: "heal",
            model: &model,
            varmap: &vm,
            train: &self.train,
            valid: &self.valid,
            teacher: Some(KdTargets {
                logits: targets,
                alpha: self.distill.alpha,
                temperature: self.distill.temperature,
            }),
            pad_id: self.pad,
            device: Device::Cpu,
            metrics: Some(dir.join("metrics.jsonl")),
            progress: true,
            stop: None,
        }
        .run()?;
        tracing::info!(steps = out.steps, seconds = out.seconds, "healed");
        take_back(map, &vm)
    }
    fn template(&self) -> &Path {
        &self.folder
    }
    fn config_json(&self, arch: &ArchConfig) -> anyhow::Result<serde_json::Value> {
        let mut v = serde_json::to_value(Self::bert(arch)?)?;
        // Labels and pooling stay the source's.
        if let Some(o) = v.as_object_mut() {
            o.remove("id2label");
            o.remove("label2id");
        }
        super::overlay(&self.config_json, v)
    }
    fn gguf(
        &self,
        _: &ArchConfig,
        _: &TensorMap,
        qtype: &str,
        _: &Path,
    ) -> anyhow::Result<(u64, Measured, Vec<String>)> {
        bail!("quantize `{qtype}`: the GGUF exporter knows Llama-family decoders, not BERT classifiers; use `type: int8` (per-channel safetensors)")
    }
}

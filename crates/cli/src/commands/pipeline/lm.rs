//! Compressing a Llama-family decoder: quality is validation perplexity over the run's
//! validation blocks, speed is CPU tokens/s scoring them, healing is the run's distillation
//! objective with the uncompressed model as teacher.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use distill_compress::config::{DropLayers, NeuronImportance, Step};
use distill_compress::prune::{drop_layers, prune_ffn_neurons, prune_heads};
use distill_compress::{export_gguf, parse_qtype, tokenizer_metadata, GgufExport, TensorMap};
use distill_models::{ArchConfig, Llama, LlamaConfig, SafetensorsWeights, VarMapWeights};
use distill_teacher::{
    load_tokenizer, resolve, HubOptions, LoadOptions, Resolved, Teacher, TeacherModel,
    TeacherSource,
};
use distill_train::config::{DistillConfig, TrainConfig};
use distill_train::data::BlockSet;
use distill_train::metrics::{next_token_nll, NllSum};
use distill_train::trainer::Trainer;

use super::{least_important, take_back, varmap_of, Measured, Subject};
use crate::config::RunConfig;

/// Blocks of the training split used to rank layers for dropping.
const CALIBRATION_BLOCKS: usize = 8;

pub struct LmSubject {
    name: String,
    folder: PathBuf,
    weight_files: Vec<PathBuf>,
    config: LlamaConfig,
    config_json: serde_json::Value,
    /// The teacher's GGUF file, whose tokenizer metadata a GGUF export carries.
    gguf_tokenizer: Option<PathBuf>,
    train: BlockSet,
    valid: BlockSet,
    train_cfg: TrainConfig,
    distill: DistillConfig,
}

impl LmSubject {
    /// The model at `model` (a Hugging Face folder or repo) with the data and objective of
    /// the run config `run`; `eval_blocks` validation blocks measure each step (0 = all).
    pub fn new(model: &str, run: &RunConfig, eval_blocks: usize) -> anyhow::Result<Self> {
        let source = TeacherSource::parse(model)?;
        let resolved = resolve(&source, &HubOptions::from_env())?;
        let Resolved::Folder(folder) = &resolved else {
            bail!("{model}: the compress pipeline starts from a Hugging Face folder; convert a GGUF file first with `distill compress {model} --out DIR`");
        };
        let ArchConfig::Llama(config) = &folder.config else {
            bail!(
                "{model}: a causal-LM run compresses a Llama-family decoder; this is a `{}` model",
                folder.config.family()
            );
        };
        let tokenizer = load_tokenizer(&resolved)?;
        let (train, mut valid) = super::super::run::build_data(run, &tokenizer, config.vocab_size)?;
        if eval_blocks > 0 {
            valid.blocks.truncate(eval_blocks);
        }
        let config_json = serde_json::from_str(
            &std::fs::read_to_string(&folder.config_path)
                .with_context(|| folder.config_path.display().to_string())?,
        )?;
        let gguf_tokenizer = match TeacherSource::parse(&run.teacher.source) {
            Ok(TeacherSource::Gguf(p)) => Some(p),
            _ => None,
        };
        Ok(Self {
            name: model.to_string(),
            folder: folder.dir.clone(),
            weight_files: folder.weight_files.clone(),
            config: config.clone(),
            config_json,
            gguf_tokenizer,
            train,
            valid,
            train_cfg: run.train.clone(),
            distill: run.distill.clone(),
        })
    }

    fn llama(arch: &ArchConfig) -> anyhow::Result<&LlamaConfig> {
        match arch {
            ArchConfig::Llama(c) => Ok(c),
            ArchConfig::Bert(_) => bail!("expected a Llama config"),
        }
    }

    /// Per layer and FFN neuron: mean |silu(gate)·up| over the calibration blocks times the
    /// norm of the neuron's down-projection column.
    fn activation_scores(
        &self,
        cfg: &LlamaConfig,
        map: &TensorMap,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let calib = &self.train.blocks[..self.train.len().min(CALIBRATION_BLOCKS)];
        let flat: Vec<u32> = calib.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (calib.len(), self.train.block_size), &Device::Cpu)?;
        let means = Llama::load(cfg, map)?.ffn_activation_means(&ids)?;
        means
            .into_iter()
            .enumerate()
            .map(|(l, m)| {
                let down = &map.tensors[&format!("model.layers.{l}.mlp.down_proj.weight")];
                let norms = down.sqr()?.sum(0)?.sqrt()?.to_vec1::<f32>()?;
                Ok(m.iter().zip(norms).map(|(a, n)| a * n).collect())
            })
            .collect()
    }

    /// The `n` layers whose removal (each alone) raises the calibration perplexity least.
    fn least_important_layers(
        &self,
        cfg: &LlamaConfig,
        map: &TensorMap,
        n: usize,
    ) -> anyhow::Result<(Vec<usize>, String)> {
        let calib = &self.train.blocks[..self.train.len().min(CALIBRATION_BLOCKS)];
        least_important(cfg.num_hidden_layers, n, "calibration perplexity", |l| {
            let mut t = map.tensors.clone();
            let c = drop_layers(cfg, &mut t, &[l])?;
            let m = Llama::load(&c, &TensorMap::from_tensors(t, Device::Cpu))?;
            Ok(score(&m, calib)?.quality)
        })
    }
}

impl Subject for LmSubject {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn task(&self) -> &'static str {
        "causal_lm"
    }
    fn base(&self) -> anyhow::Result<(ArchConfig, TensorMap)> {
        let src = SafetensorsWeights::open(&self.weight_files, DType::F32, &Device::Cpu)?;
        let map = TensorMap::read(&src, self.config.tensor_shapes())?;
        Ok((ArchConfig::Llama(self.config.clone()), map))
    }
    fn base_bytes(&self) -> u64 {
        distill_models::weights::bytes_on_disk(&self.weight_files)
    }
    fn dense_dtype(&self) -> DType {
        DType::F32
    }
    fn measure(&self, arch: &ArchConfig, map: &TensorMap) -> anyhow::Result<Measured> {
        let m = Llama::load(Self::llama(arch)?, map)?;
        score(&m, &self.valid.blocks)
    }
    fn prune(
        &self,
        arch: &mut ArchConfig,
        map: &mut TensorMap,
        step: &Step,
    ) -> anyhow::Result<Vec<String>> {
        let Step::Prune {
            drop_layers: drop,
            heads,
            ffn_neurons,
            importance,
            ..
        } = step
        else {
            bail!("not a prune step")
        };
        let mut cfg = Self::llama(arch)?.clone();
        let mut notes = vec![];
        if let Some(d) = drop {
            let list = match d {
                DropLayers::These(l) => l.clone(),
                DropLayers::LeastImportant { least_important } => {
                    let (l, note) = self.least_important_layers(&cfg, map, *least_important)?;
                    notes.push(note);
                    l
                }
            };
            cfg = drop_layers(&cfg, &mut map.tensors, &list)?;
        }
        if let Some(k) = heads {
            cfg = prune_heads(&cfg, &mut map.tensors, *k)?;
        }
        if let Some(n) = ffn_neurons {
            let scores = match importance {
                NeuronImportance::Weights => None,
                NeuronImportance::Activations => Some(self.activation_scores(&cfg, map)?),
            };
            cfg = prune_ffn_neurons(&cfg, &mut map.tensors, *n, scores.as_deref())?;
        }
        *arch = ArchConfig::Llama(cfg);
        Ok(notes)
    }
    fn heal(
        &self,
        arch: &ArchConfig,
        map: &mut TensorMap,
        step: &Step,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let Step::Heal { steps, lr, .. } = step else {
            bail!("not a heal step")
        };
        let cfg = Self::llama(arch)?;
        let vm = varmap_of(map)?;
        let student = Llama::load(cfg, &VarMapWeights::new(&vm, DType::F32, &Device::Cpu))?;
        let (tarch, tmap) = self.base()?;
        let teacher = Llama::load(Self::llama(&tarch)?, &tmap)?;
        let train_cfg = TrainConfig {
            steps: *steps,
            lr: lr.unwrap_or(self.train_cfg.lr),
            warmup_steps: (*steps / 10).max(1).min(*steps),
            eval_every: *steps,
            checkpoint_every: *steps,
            keep_checkpoints: 1,
            ..self.train_cfg.clone()
        };
        // Layer pairs of hidden-state losses refer to the trained student's layers, which
        // pruning may have removed: healing matches logits only.
        let distill = DistillConfig {
            hidden: vec![],
            ..self.distill.clone()
        };
        let out = Trainer {
            train_cfg: &train_cfg,
            distill: &distill,
            student: &student,
            varmap: &vm,
            student_hidden_size: cfg.hidden_size,
            teacher: Some(&teacher),
            teacher_hidden_size: self.config.hidden_size,
            train: &self.train,
            valid: &self.valid,
            run_dir: dir.to_path_buf(),
            device: Device::Cpu,
            stop: Arc::new(AtomicBool::new(false)),
            stop_at: None,
            progress: true,
        }
        .run(false)?;
        tracing::info!(steps = out.steps, seconds = out.seconds, "healed");
        take_back(map, &vm)
    }
    fn template(&self) -> &Path {
        &self.folder
    }
    fn config_json(&self, arch: &ArchConfig) -> anyhow::Result<serde_json::Value> {
        super::overlay(&self.config_json, serde_json::to_value(Self::llama(arch)?)?)
    }
    fn gguf(
        &self,
        arch: &ArchConfig,
        map: &TensorMap,
        qtype: &str,
        path: &Path,
    ) -> anyhow::Result<(u64, Measured, Vec<String>)> {
        let tok = self.gguf_tokenizer.as_ref().context(
            "GGUF export copies the tokenizer metadata of a GGUF teacher, and teacher.source is not a GGUF file",
        )?;
        let summary = export_gguf(
            path,
            &GgufExport {
                config: Self::llama(arch)?,
                weights: map,
                tokenizer: tokenizer_metadata(tok)?,
                qtype: parse_qtype(qtype)?,
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into()),
            },
        )?;
        let q = Teacher::load(
            &TeacherSource::Gguf(path.to_path_buf()),
            &LoadOptions {
                device: Device::Cpu,
                dtype: DType::F32,
                gguf_mode: distill_teacher::GgufCompute::Quantized,
                ..Default::default()
            },
        )?;
        let TeacherModel::Llama(m) = &q.model else {
            bail!("{}: not a decoder", path.display())
        };
        let measured = score(m, &self.valid.blocks)?;
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for f in &summary.fallbacks {
            *kinds
                .entry(format!(
                    "{} → {} (rows of {} do not fit its blocks)",
                    f.wanted, f.used, f.row_length
                ))
                .or_default() += 1;
        }
        let notes = kinds
            .into_iter()
            .map(|(k, n)| format!("{n} tensors {k}"))
            .collect();
        Ok((summary.bytes, measured, notes))
    }
}

/// Perplexity over `blocks` (one block per forward) and tokens/s.
pub(crate) fn score<'a>(
    model: &Llama,
    blocks: impl IntoIterator<Item = &'a Vec<u32>>,
) -> anyhow::Result<Measured> {
    let mut total = NllSum::default();
    let start = Instant::now();
    let mut tokens = 0;
    for b in blocks {
        let ids = Tensor::new(b.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = model.forward(&ids, None, false)?.logits;
        total.add(next_token_nll(&logits, &ids, &[b.len()])?);
        tokens += b.len();
    }
    Ok(Measured {
        quality: total.perplexity(),
        speed: tokens as f64 / start.elapsed().as_secs_f64().max(1e-9),
    })
}

//! Compressing a Llama-family decoder: quality is validation perplexity over the run's
//! validation blocks, speed is CPU tokens/s scoring them, calibration is the first training
//! blocks, healing is the run's distillation objective with the uncompressed model as teacher.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use distill_compress::framework::pipeline::{Evaluator, Measured, Quality};
use distill_compress::{
    Calibration, CalibrationTokens, Candidate, CompressError, Defaults, Length, StepHook,
};
use distill_compress::{TensorMap, Trainer};
use distill_models::{ArchConfig, Llama, LlamaConfig, SafetensorsWeights, VarMapWeights};
use distill_teacher::folder::HfFolder;
use distill_teacher::{
    load_tokenizer, resolve, GgufCompute, HubOptions, LoadOptions, Resolved, Teacher, TeacherSource,
};
use distill_train::config::DistillConfig;
use distill_train::data::BlockSet;
use distill_train::scoring::perplexity;
use distill_train::tasks::{CausalLm, CausalLmSetup, Student, TeacherSignal};
use distill_train::training::Warmup;
use distill_train::Training;

use super::{heal, heal_training, read_config_json, take_back, varmap_of, Prepared};
use crate::data::build_data;
use crate::error::{external, Error, Result};
use crate::job::RunConfig;
use crate::options::RunOptions;

/// Calibration blocks whose loss ranks layers (each candidate layer is scored by running it).
const LOSS_BLOCKS: usize = 8;

fn model(c: &Candidate) -> std::result::Result<Llama, CompressError> {
    Ok(Llama::load(c.llama()?, &c.weights)?)
}

struct LmEvaluator {
    valid: BlockSet,
    calibration: Vec<Vec<u32>>,
    block_size: usize,
}

impl Calibration for LmEvaluator {
    fn measure_name(&self) -> &str {
        "calibration perplexity"
    }
    fn loss(&self, c: &Candidate) -> std::result::Result<f64, CompressError> {
        let m = model(c)?;
        let n = self.calibration.len().min(LOSS_BLOCKS);
        Ok(
            perplexity(&m, self.calibration[..n].iter().map(Vec::as_slice))
                .map_err(external)?
                .0,
        )
    }
    fn tokens(&self) -> Option<CalibrationTokens> {
        let flat: Vec<u32> = self.calibration.iter().flatten().copied().collect();
        Tensor::from_vec(
            flat,
            (self.calibration.len(), self.block_size),
            &Device::Cpu,
        )
        .ok()
        .map(CalibrationTokens::Blocks)
    }
}

impl Evaluator for LmEvaluator {
    fn quality(&self) -> Quality {
        Quality::Perplexity
    }
    fn measure(&self, c: &Candidate) -> std::result::Result<Measured, CompressError> {
        let m = model(c)?;
        let (quality, speed) =
            perplexity(&m, self.valid.blocks.iter().map(Vec::as_slice)).map_err(external)?;
        Ok(Measured {
            kind: Quality::Perplexity,
            quality,
            speed,
            kl_to_uncompressed: None,
        })
    }
    fn measure_gguf(&self, path: &Path) -> std::result::Result<Measured, CompressError> {
        let q = Teacher::load(
            &TeacherSource::Gguf(path.to_path_buf()),
            &LoadOptions {
                device: Device::Cpu,
                dtype: DType::F32,
                gguf_mode: GgufCompute::Quantized,
                ..Default::default()
            },
        )
        .map_err(external)?;
        let (m, _) = q.language_model().map_err(external)?;
        let (quality, speed) =
            perplexity(m, self.valid.blocks.iter().map(Vec::as_slice)).map_err(external)?;
        Ok(Measured {
            kind: Quality::Perplexity,
            quality,
            speed,
            kl_to_uncompressed: None,
        })
    }
    fn calibration(&self) -> &dyn Calibration {
        self
    }
}

struct LmTrainer<'a> {
    train: BlockSet,
    valid: BlockSet,
    training: Training,
    distill: DistillConfig,
    teacher: Candidate,
    opts: &'a RunOptions<'a>,
}

impl Trainer for LmTrainer<'_> {
    fn train(
        &self,
        c: &mut Candidate,
        length: Length,
        lr: Option<f64>,
        after_step: StepHook,
    ) -> std::result::Result<(), CompressError> {
        let cfg = c.llama()?.clone();
        let vm = varmap_of(&c.weights).map_err(external)?;
        let student = Llama::load(&cfg, &VarMapWeights::new(&vm, DType::F32, &Device::Cpu))?;
        let teacher = model(&self.teacher)?;
        let batches = self.train.len().div_ceil(self.training.batch_size);
        let mut training = Training {
            patience: 0,
            keep_best: false,
            ..heal_training(&self.training, length, lr)
        };
        let steps = training.total_steps(batches);
        training.warmup = Warmup::Steps((steps / 10).max(1).min(steps));
        training.eval_every = steps;
        training.checkpoint_every = steps;
        let mut task = CausalLm::new(CausalLmSetup {
            student: Student {
                model: &student,
                varmap: &vm,
            },
            teacher: Some(TeacherSignal::Online(&teacher)),
            distill: &self.distill,
            training: &training,
            train: &self.train,
            valid: &self.valid,
            device: Device::Cpu,
            cross: None,
        })
        .map_err(external)?;
        heal(&training, &mut task, after_step, self.opts.observer)?;
        drop(task);
        take_back(&mut c.weights, &vm);
        Ok(())
    }
}

/// The model at `model` (a Hugging Face folder or repo) with the data and objective of the
/// run config `run`; `eval_blocks` validation blocks measure each step (0 = all), the first
/// `calibration_blocks` training blocks calibrate. The run's documents are split and
/// tokenised with the model's own tokenizer.
pub fn for_causal_lm<'a>(
    model: &str,
    run: &RunConfig,
    eval_blocks: usize,
    calibration_blocks: usize,
    opts: &'a RunOptions<'a>,
) -> Result<Prepared<'a>> {
    let source = TeacherSource::parse(model)?;
    let resolved = resolve(&source, &HubOptions::from_env())?;
    let Resolved::Folder(folder) = &resolved else {
        return Err(Error::Invalid(format!("{model}: the compress pipeline starts from a Hugging Face folder; convert a GGUF file first with `distill compress {model} --out DIR`")));
    };
    let config = decoder_config(model, folder)?;
    let tokenizer = load_tokenizer(&resolved)?;
    let (train, valid) = build_data(run, &tokenizer, config.vocab_size)?;
    let data = LmData {
        train,
        valid,
        eval_blocks,
        calibration_blocks,
    };
    prepare(model, folder, run, data, opts)
}

/// The student a run has just trained and exported to `folder`, with the run's own blocks
/// (no second split or tokenisation) and settings.
pub(crate) fn for_trained<'a>(
    folder: &Path,
    run: &RunConfig,
    data: LmData,
    opts: &'a RunOptions<'a>,
) -> Result<Prepared<'a>> {
    let name = folder.display().to_string();
    let folder = HfFolder::open(folder)?;
    prepare(&name, &folder, run, data, opts)
}

/// The blocks a compression measures, calibrates and heals on.
pub(crate) struct LmData {
    pub(crate) train: BlockSet,
    pub(crate) valid: BlockSet,
    /// Validation blocks that measure each step (0 = all).
    pub(crate) eval_blocks: usize,
    /// Training blocks that calibrate (the first ones).
    pub(crate) calibration_blocks: usize,
}

/// The Llama-family config of `folder` (an encoder is an error naming `model`).
fn decoder_config<'f>(model: &str, folder: &'f HfFolder) -> Result<&'f LlamaConfig> {
    match &folder.config {
        ArchConfig::Llama(config) => Ok(config),
        other => Err(Error::Invalid(format!(
            "{model}: a causal-LM run compresses a Llama-family decoder; this is a `{}` model",
            other.family()
        ))),
    }
}

/// The model in `folder` with the evaluator and trainer of `run` over `data`.
fn prepare<'a>(
    model: &str,
    folder: &HfFolder,
    run: &RunConfig,
    data: LmData,
    opts: &'a RunOptions<'a>,
) -> Result<Prepared<'a>> {
    let config = decoder_config(model, folder)?;
    let LmData {
        train,
        mut valid,
        eval_blocks,
        calibration_blocks,
    } = data;
    if eval_blocks > 0 {
        valid.blocks.truncate(eval_blocks);
    }
    let src = SafetensorsWeights::open(&folder.weight_files, DType::F32, &Device::Cpu)?;
    let base = Candidate {
        arch: ArchConfig::Llama(config.clone()),
        weights: TensorMap::read(&src, config.tensor_shapes())?,
    };
    // A GGUF teacher's tokenizer keys, unless the student's vocabulary is its own (trimmed, or
    // its own tokenizer): then they are built from the student's tokenizer.json.
    let gguf_tokenizer = match TeacherSource::parse(&run.teacher.source) {
        Ok(TeacherSource::Gguf(p))
            if run.student.vocab.is_none() && run.student.tokenizer.is_none() =>
        {
            Some(p)
        }
        _ => None,
    };
    let calibration = train.blocks[..train.len().min(calibration_blocks)].to_vec();
    let evaluator = LmEvaluator {
        valid: valid.clone(),
        calibration,
        block_size: train.block_size,
    };
    // Layer pairs of hidden-state losses refer to the trained student's layers, which
    // pruning may have removed: healing matches logits only.
    let distill = DistillConfig {
        hidden: vec![],
        ..run.distill.clone()
    };
    Ok(Prepared {
        name: model.to_string(),
        bytes: distill_models::weights::bytes_on_disk(&folder.weight_files),
        template: folder.dir.clone(),
        base_config: read_config_json(&folder.config_path)?,
        dense_dtype: DType::F32,
        gguf_tokenizer,
        teacher: None,
        evaluator: Box::new(evaluator),
        trainer: Box::new(LmTrainer {
            train,
            valid,
            training: run.train.clone(),
            distill,
            teacher: base.clone(),
            opts,
        }),
        base,
        defaults: Defaults::causal_lm(),
    })
}

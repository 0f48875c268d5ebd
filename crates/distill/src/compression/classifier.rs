//! Compressing a BERT sequence classifier: quality is validation accuracy, speed is CPU
//! messages/s at batch 32, calibration is the cross-entropy on the first training examples,
//! healing is the run's classification distillation (soft targets from the uncompressed
//! classifier).

use std::cell::OnceCell;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::Init;
use distill_compress::framework::pipeline::{Evaluator, Measured, Quality};
use distill_compress::{
    Calibration, CalibrationTokens, Candidate, CompressError, Defaults, Length, StepHook,
};
use distill_compress::{TensorMap, Trainer};
use distill_models::{
    ArchConfig, BertClassifier, Pooling, SafetensorsWeights, VarMapWeights, WeightSource,
};
use distill_train::config::DistillConfig;
use distill_train::data::{encode_examples, EncodedSet};
use distill_train::data::{load_labelled, split_stratified};
use distill_train::scoring::{accuracy, mean_cross_entropy, mean_kl, predict_logits};
use distill_train::tasks::{Classification, ClassificationSetup, Student, TeacherSignal};
use distill_train::Training;

use super::{heal, heal_training, read_config_json, take_back, varmap_of, Prepared};
use crate::error::{external, Context, Error, Result};
use crate::job::ClassifyConfig;
use crate::options::RunOptions;
use crate::saved_classifier::load_classifier;

/// Training examples calibration uses (layer ranking).
const CALIBRATION_EXAMPLES: usize = 256;

struct Head {
    labels: usize,
    pooling: Pooling,
    pad: u32,
}

impl Head {
    fn model(&self, c: &Candidate) -> std::result::Result<BertClassifier, CompressError> {
        let ArchConfig::Bert(cfg) = &c.arch else {
            return Err(CompressError::Unsupported(
                "expected a BERT classifier".into(),
            ));
        };
        Ok(BertClassifier::load(
            cfg,
            &c.weights,
            self.labels,
            self.pooling,
        )?)
    }

    /// Class logits of `set` and the seconds they took.
    fn logits(
        &self,
        c: &Candidate,
        set: &EncodedSet,
    ) -> std::result::Result<(Vec<Vec<f32>>, f64), CompressError> {
        let m = self.model(c)?;
        let t = Instant::now();
        let logits = predict_logits(&m, set, 32, self.pad, &Device::Cpu).map_err(external)?;
        Ok((logits, t.elapsed().as_secs_f64().max(1e-9)))
    }
}

struct ClsEvaluator {
    head: Head,
    valid: EncodedSet,
    /// The uncompressed classifier's logits on `valid`, what `kl_to_uncompressed` compares to.
    reference: Vec<Vec<f32>>,
    /// Examples the loss ranks layers on.
    calibration: EncodedSet,
    /// Examples the data-aware methods calibrate on (`compress.calibration_blocks`).
    statistics: Vec<Vec<u32>>,
}

impl Calibration for ClsEvaluator {
    fn measure_name(&self) -> &str {
        "calibration loss"
    }
    fn loss(&self, c: &Candidate) -> std::result::Result<f64, CompressError> {
        let (logits, _) = self.head.logits(c, &self.calibration)?;
        Ok(mean_cross_entropy(&logits, &self.calibration.labels))
    }
    fn tokens(&self) -> Option<CalibrationTokens> {
        Some(CalibrationTokens::Examples(self.statistics.clone()))
    }
}

impl Evaluator for ClsEvaluator {
    fn quality(&self) -> Quality {
        Quality::Accuracy
    }
    fn measure(&self, c: &Candidate) -> std::result::Result<Measured, CompressError> {
        let (logits, secs) = self.head.logits(c, &self.valid)?;
        Ok(Measured {
            kind: Quality::Accuracy,
            quality: accuracy(&logits, &self.valid.labels),
            speed: self.valid.len() as f64 / secs,
            kl_to_uncompressed: Some(mean_kl(&self.reference, &logits)),
        })
    }
    fn measure_gguf(&self, path: &Path) -> std::result::Result<Measured, CompressError> {
        Err(CompressError::Unsupported(format!(
            "{}: a classifier is not measured as GGUF",
            path.display()
        )))
    }
    fn calibration(&self) -> &dyn Calibration {
        self
    }
}

struct ClsTrainer<'a> {
    head: Head,
    train: EncodedSet,
    valid: EncodedSet,
    training: Training,
    distill: DistillConfig,
    teacher: Candidate,
    /// The uncompressed classifier's logits on the training split, once.
    soft_targets: OnceCell<Vec<Vec<f32>>>,
    opts: &'a RunOptions<'a>,
}

impl Trainer for ClsTrainer<'_> {
    fn train(
        &self,
        c: &mut Candidate,
        length: Length,
        lr: Option<f64>,
        after_step: StepHook,
    ) -> std::result::Result<(), CompressError> {
        if self.soft_targets.get().is_none() {
            let (logits, _) = self.head.logits(&self.teacher, &self.train)?;
            let _ = self.soft_targets.set(logits);
        }
        let targets = self.soft_targets.get().expect("set above");
        let vm = varmap_of(&c.weights).map_err(external)?;
        let ArchConfig::Bert(cfg) = &c.arch else {
            return Err(CompressError::Unsupported(
                "expected a BERT classifier".into(),
            ));
        };
        let model = BertClassifier::load(
            cfg,
            &VarMapWeights::new(&vm, DType::F32, &Device::Cpu),
            self.head.labels,
            self.head.pooling,
        )?;
        let training = Training {
            freeze_embeddings: false,
            freeze_layers: vec![],
            ..heal_training(&self.training, length, lr)
        };
        let mut task = Classification::new(ClassificationSetup {
            student: Student {
                model: &model,
                varmap: &vm,
            },
            teacher: Some(TeacherSignal::Cached(targets)),
            distill: &self.distill,
            training: &training,
            train: &self.train,
            valid: &self.valid,
            pad_id: self.head.pad,
            device: Device::Cpu,
        })
        .map_err(external)?;
        heal(&training, &mut task, after_step, self.opts.observer)?;
        drop(task);
        take_back(&mut c.weights, &vm);
        Ok(())
    }
}

/// The classifier folder `model` with the data split and objective of the run config; the
/// first `calibration_examples` training examples calibrate the data-aware methods.
pub fn for_classification<'a>(
    model: &str,
    run: &ClassifyConfig,
    calibration_examples: usize,
    opts: &'a RunOptions<'a>,
) -> Result<Prepared<'a>> {
    let device = Device::Cpu;
    let loaded = load_classifier(model, &device)?;
    let source = distill_teacher::TeacherSource::parse(model)?;
    let resolved = distill_teacher::resolve(&source, &distill_teacher::HubOptions::from_env())?;
    let distill_teacher::Resolved::Folder(folder) = &resolved else {
        return Err(Error::Invalid(format!(
            "{model}: a classifier is a Hugging Face folder"
        )));
    };
    let base_config = read_config_json(&folder.config_path)?;
    let dtype = match base_config.get("torch_dtype").and_then(|d| d.as_str()) {
        Some("float16") => DType::F16,
        Some("bfloat16") => DType::BF16,
        _ => DType::F32,
    };
    let set = load_labelled(&run.data).context("data.source")?;
    if set.labels != loaded.labels {
        return Err(Error::Invalid(format!(
            "{model}: its classes {:?} differ from the data's {:?}",
            loaded.labels, set.labels
        )));
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
    let (train, valid) = (encode(&split.train)?, encode(&split.validation)?);
    let statistics = train.ids[..train.len().min(calibration_examples)].to_vec();
    let k = train.len().min(CALIBRATION_EXAMPLES);
    let calibration = EncodedSet {
        ids: train.ids[..k].to_vec(),
        labels: train.labels[..k].to_vec(),
        truncated: 0,
    };
    let src = SafetensorsWeights::open(&folder.weight_files, DType::F32, &device)?;
    let mut tensors = std::collections::BTreeMap::new();
    for (name, _, shape) in src.tensor_infos() {
        if name.ends_with("position_ids") {
            continue;
        }
        tensors.insert(name.clone(), src.tensor(&name, &shape, Init::Const(0.0))?);
    }
    let base = Candidate {
        arch: ArchConfig::Bert(loaded.config.clone()),
        weights: TensorMap::from_tensors(tensors, device.clone()),
    };
    let head = || Head {
        labels: loaded.labels.len(),
        pooling: loaded.pooling,
        pad: loaded.pad_id,
    };
    let distill = DistillConfig {
        hidden: vec![],
        ..run.distill.clone()
    };
    Ok(Prepared {
        name: model.to_string(),
        bytes: loaded.bytes,
        template: folder.dir.clone(),
        base_config,
        dense_dtype: dtype,
        gguf_tokenizer: None,
        teacher: None,
        evaluator: Box::new(ClsEvaluator {
            reference: head().logits(&base, &valid)?.0,
            head: head(),
            valid: valid.clone(),
            calibration,
            statistics,
        }),
        trainer: Box::new(ClsTrainer {
            head: head(),
            train,
            valid,
            training: run.train.clone(),
            distill,
            teacher: base.clone(),
            soft_targets: OnceCell::new(),
            opts,
        }),
        base,
        defaults: Defaults::classification(),
    })
}

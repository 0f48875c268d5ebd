//! The teacher stage: a BERT encoder in Hugging Face layout, checked and read, then either
//! fine-tuned on the run's data (`finetune:`; a fresh head, frozen parts as configured) or
//! used with the classification head it has.

use candle_core::{DType, Var};
use candle_nn::{Init, VarMap};
use distill_models::{ArchConfig, BertClassifier, BertConfig, SafetensorsWeights, VarMapWeights};
use distill_student::{save_bert_classifier, BertExport};
use distill_teacher::folder::HfFolder;
use distill_teacher::{load_tokenizer, resolve, Resolved, TeacherSource};
use distill_train::tasks::{Classification, ClassificationSetup, Student};

use super::data::{Encoded, Encoding, Labelled};
use super::prepare::Prepared;
use super::stages::{fit_stage, labels_only};
use crate::error::{Context, Error, Result};
use crate::options::RunOptions;
use crate::report::StageReport;
use crate::saved_classifier::{labels_of, pad_id};

/// The teacher's files: its config, tokenizer and weights.
pub(crate) struct TeacherFolder {
    pub(crate) source: TeacherSource,
    pub(crate) folder: HfFolder,
    pub(crate) config: BertConfig,
    pub(crate) tokenizer: tokenizers::Tokenizer,
    pub(crate) pad: u32,
    /// Tokens an example keeps: `data.max_length`, at most the teacher's positions.
    pub(crate) max_len: usize,
    pub(crate) weights: SafetensorsWeights,
}

impl TeacherFolder {
    /// How the run's examples are encoded for this teacher.
    pub(crate) fn encoding(&self) -> Encoding<'_> {
        Encoding {
            tokenizer: &self.tokenizer,
            max_len: self.max_len,
            vocab_size: self.config.vocab_size,
        }
    }
}

/// Resolves and reads the teacher (an encoder in Hugging Face layout, weights all finite).
pub(crate) fn open(run: &Prepared) -> Result<TeacherFolder> {
    let cfg = run.cfg;
    let source = TeacherSource::parse(&cfg.teacher.source).context("teacher.source")?;
    let resolved = resolve(&source, &run.load.hub)?;
    distill_teacher::check_finite(&source, &resolved, run.load.non_finite)
        .context("teacher.source")?;
    let Resolved::Folder(folder) = &resolved else {
        return Err(Error::Invalid(format!("teacher.source: classification needs a BERT encoder in Hugging Face layout; {source} is a GGUF file")));
    };
    let ArchConfig::Bert(config) = &folder.config else {
        return Err(Error::Invalid(format!(
            "teacher.source: classification needs a BERT encoder; {source} is a `{}` decoder",
            folder.config.family()
        )));
    };
    let tokenizer = load_tokenizer(&resolved)?.tokenizer;
    let pad = pad_id(&tokenizer, config);
    let max_len = cfg.data.max_length.min(config.max_position_embeddings);
    if max_len < cfg.data.max_length {
        tracing::warn!(
            "data.max_length {} exceeds the teacher's {} positions; using {max_len}",
            cfg.data.max_length,
            config.max_position_embeddings
        );
    }
    let weights = SafetensorsWeights::open(&folder.weight_files, DType::F32, &run.device)?;
    Ok(TeacherFolder {
        config: config.clone(),
        folder: (**folder).clone(),
        source,
        tokenizer,
        pad,
        max_len,
        weights,
    })
}

/// The run's teacher classifier.
pub(crate) struct Obtained {
    pub(crate) model: BertClassifier,
    /// Its variables, when fine-tuned here (the student then starts from them).
    pub(crate) varmap: Option<VarMap>,
    /// Where it is on disk (the run's `teacher/` when fine-tuned).
    pub(crate) path: String,
    /// The fine-tuning stage, when there was one.
    pub(crate) stage: Option<StageReport>,
}

/// What the teacher stage ends with.
pub(crate) enum TeacherStage {
    Ready(Box<Obtained>),
    /// Fine-tuning was interrupted: where its best teacher so far is.
    Interrupted(String),
}

/// Fine-tunes the teacher (`finetune:`) or takes the head it has.
pub(crate) fn obtain(
    run: &Prepared,
    t: &TeacherFolder,
    l: &Labelled,
    data: &Encoded,
    opts: &RunOptions,
) -> Result<TeacherStage> {
    if run.cfg.finetune.is_some() {
        return finetune(run, t, l, data, opts);
    }
    let cfg = run.cfg;
    if !BertClassifier::has_head(&t.weights) {
        return Err(Error::Invalid(format!(
            "teacher.source: {} has no classification head (`classifier.weight`); add a `finetune:` section to train one on the data",
            t.source
        )));
    }
    let labels = labels_of(&t.config, &t.weights, &cfg.teacher.source)?;
    if labels != l.set.labels && t.config.id2label.is_some() {
        return Err(Error::Invalid(format!(
            "teacher.source: the head's classes {labels:?} differ from the data's {:?} (set data.labels in the head's order)",
            l.set.labels
        )));
    }
    if labels.len() != l.num_labels() {
        return Err(Error::Invalid(format!(
            "teacher.source: the head has {} classes, the data {}",
            labels.len(),
            l.num_labels()
        )));
    }
    let model = BertClassifier::load(&t.config, &t.weights, l.num_labels(), cfg.pooling)?;
    Ok(TeacherStage::Ready(Box::new(Obtained {
        model,
        varmap: None,
        path: cfg.teacher.source.clone(),
        stage: None,
    })))
}

/// Fine-tunes the encoder with a fresh head on the run's labels and saves it as `teacher/`.
fn finetune(
    run: &Prepared,
    t: &TeacherFolder,
    l: &Labelled,
    data: &Encoded,
    opts: &RunOptions,
) -> Result<TeacherStage> {
    let cfg = run.cfg;
    let ft = cfg.finetune.as_ref().expect("a finetune section");
    ft.check_layers("finetune", t.config.num_hidden_layers)?;
    let num_labels = l.num_labels();
    if BertClassifier::has_head(&t.weights) {
        let rows = labels_of(&t.config, &t.weights, &cfg.teacher.source)?.len();
        if rows != num_labels {
            return Err(Error::Invalid(format!("teacher.source: its head has {rows} classes, the data {num_labels}; start from an encoder without a head")));
        }
    }
    let vm = variables_of(&t.weights)?;
    let frozen = ft.clone();
    // The fresh head is drawn from the run's seed, so fine-tuning is reproducible.
    let src = VarMapWeights::new(&vm, DType::F32, &run.device)
        .with_frozen(move |n| frozen.is_frozen(n))
        .with_seed(ft.seed);
    let model = BertClassifier::load(&t.config, &src, num_labels, cfg.pooling)?;
    tracing::info!(source = %t.source, "fine-tuning the teacher");
    let only_labels = labels_only(cfg);
    let mut task = Classification::new(ClassificationSetup {
        student: Student {
            model: &model,
            varmap: &vm,
        },
        teacher: None,
        distill: &only_labels,
        training: ft,
        train: &data.train,
        valid: &data.valid,
        pad_id: t.pad,
        device: run.device.clone(),
    })?;
    let out = fit_stage("finetune", ft, &mut task, run, opts)?;
    drop(task);
    let teacher_dir = run.run_dir.join("teacher");
    save_bert_classifier(
        &teacher_dir,
        &BertExport {
            config: &t.config,
            varmap: &vm,
            labels: &l.set.labels,
            pooling: cfg.pooling,
            tokenizer: &t.tokenizer,
            dtype: DType::F32,
            max_length: t.max_len,
        },
    )?;
    let stage = StageReport::from(&out);
    if out.interrupted {
        return Ok(TeacherStage::Interrupted(format!(
            "interrupted during fine-tuning; the best teacher so far is in {}",
            teacher_dir.display()
        )));
    }
    Ok(TeacherStage::Ready(Box::new(Obtained {
        model,
        varmap: Some(vm),
        path: teacher_dir.display().to_string(),
        stage: Some(stage),
    })))
}

/// Every tensor of the encoder as a variable under Hugging Face classifier names; the head
/// (and the pooler, if the checkpoint lacks one) start fresh when the model loads.
fn variables_of(st: &SafetensorsWeights) -> Result<VarMap> {
    use distill_models::WeightSource;
    let vm = VarMap::new();
    let tprefix = distill_models::encoder_prefix(st);
    let mut data = distill_models::weights::vars(&vm);
    for (name, _, shape) in st.tensor_infos() {
        if name.ends_with("position_ids") {
            continue;
        }
        let t = st.tensor(&name, &shape, Init::Const(0.0))?;
        let canonical = if name.starts_with("classifier.") || !tprefix.is_empty() {
            name.clone()
        } else {
            format!("bert.{name}")
        };
        data.insert(canonical, Var::from_tensor(&t)?);
    }
    drop(data);
    Ok(vm)
}

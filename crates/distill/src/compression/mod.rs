//! The `compress:` section wired to a task: a trained model, the task's [`Evaluator`]
//! (validation perplexity or accuracy, calibration on the training split) and [`Trainer`]
//! (healing through the learner with the run's objective), run by
//! `distill_compress::framework::pipeline` and rendered by [`crate::report`].
//!
//! The training pass lives in `distill-compress` as a pass like any other, but the training
//! itself comes from here: compression stays free of data, losses and optimisers, and this
//! layer, where both meet, provides them.

mod classifier;
pub(crate) mod lm;
pub mod quick;

use std::path::{Path, PathBuf};

use candle_core::{DType, Var};
use candle_nn::VarMap;
use distill_compress::framework::pipeline::{self, Evaluator, Outcome, Source};
use distill_compress::{
    Candidate, CompressConfig, CompressError, Defaults, Length, Output, StepHook, TensorMap,
    Trainer,
};
use distill_files::write_file;
use distill_train::{Learner, Observer, Task, TrainError, Training};

pub use classifier::for_classification;
pub use lm::for_causal_lm;

use crate::error::{external, io, Context, Error, Result};
use crate::job::Job;
use crate::options::RunOptions;
use crate::report::compress as render;

/// A trained model ready to be compressed, with everything its task measures and heals by.
pub struct Prepared<'a> {
    /// The model as given (for the report).
    pub name: String,
    pub base: Candidate,
    /// Bytes of its weights on disk.
    pub bytes: u64,
    /// The model's folder: its tokenizer files go into every folder artifact.
    pub template: PathBuf,
    pub base_config: serde_json::Value,
    /// dtype dense weights are written in (the source's).
    pub dense_dtype: DType,
    /// A GGUF file whose tokenizer metadata GGUF artifacts carry (a GGUF teacher's).
    pub gguf_tokenizer: Option<PathBuf>,
    /// The teacher, marked on the size-vs-quality plot (set by a run that has one measured).
    pub teacher: Option<render::Reference>,
    pub evaluator: Box<dyn Evaluator + 'a>,
    pub trainer: Box<dyn Trainer + 'a>,
    pub defaults: Defaults,
}

/// What a compress run produced: the rows and where the artifacts and reports are.
#[derive(Clone, Debug)]
pub struct Compression {
    pub out: PathBuf,
    pub outcome: Outcome,
}

impl Compression {
    /// The size/quality table, one line per step.
    pub fn table(&self) -> String {
        render::table(&self.outcome)
    }
    /// The headline sentence.
    pub fn headline(&self) -> String {
        render::headline_text(&self.outcome)
    }
}

/// Runs `cfg` on `p`, writing artifacts and `compress.md`/`compress.json`/`compress.svg`
/// into `out`.
pub fn run(p: &Prepared, cfg: &CompressConfig, out: &Path) -> Result<Compression> {
    let src = Source {
        name: p.name.clone(),
        base: p.base.clone(),
        bytes: p.bytes,
        output: Output {
            template: &p.template,
            base_config: &p.base_config,
            dense_dtype: p.dense_dtype,
            gguf_tokenizer: p.gguf_tokenizer.as_deref(),
        },
    };
    let outcome = pipeline::run(
        &src,
        p.evaluator.as_ref(),
        Some(p.trainer.as_ref()),
        cfg,
        &p.defaults,
        out,
    )?;
    render::write(&outcome, out, p.teacher.as_ref())?;
    Ok(Compression {
        out: out.to_path_buf(),
        outcome,
    })
}

/// Runs the `compress:` section after a training run: artifacts and reports in
/// `RUN/compressed/`, the table and headline appended to `RUN/report.md`.
pub fn in_run(p: Prepared, cfg: &CompressConfig, run_dir: &Path) -> Result<Compression> {
    let c = run(&p, cfg, &run_dir.join("compressed"))?;
    append_to_report(&c, run_dir)?;
    Ok(c)
}

/// Appends the compression table and headline to `RUN/report.md`.
pub fn append_to_report(c: &Compression, run_dir: &Path) -> Result<()> {
    let report = run_dir.join("report.md");
    let mut md = std::fs::read_to_string(&report).unwrap_or_default();
    md.push_str(&format!(
        "\n## Compression\n\n{}\n\n{}\n![size vs quality](compressed/compress.svg)\n",
        c.headline(),
        c.table()
    ));
    write_file(&report, md.as_bytes()).map_err(crate::error::Error::from)
}

/// `distill compress MODEL --config RUN.yaml`: the run's `compress:` section on `model`, into
/// `out` (default `RUN/compressed`).
pub fn for_job(
    model: &str,
    job: &Job,
    out: Option<&Path>,
    opts: &RunOptions,
) -> Result<Compression> {
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| job.run_dir().join("compressed"));
    check_output_folder(&out, model, opts.overwrite)?;
    let (section, prepared) = match job {
        Job::CausalLm(cfg) => {
            let c = cfg
                .compress
                .as_ref()
                .ok_or_else(|| Error::Invalid("no `compress:` section".into()))?;
            (
                c,
                for_causal_lm(model, cfg, c.eval_blocks, c.calibration_blocks, opts)?,
            )
        }
        Job::Classification(cfg) => {
            let c = cfg
                .compress
                .as_ref()
                .ok_or_else(|| Error::Invalid("no `compress:` section".into()))?;
            (
                c,
                for_classification(model, cfg, c.calibration_blocks, opts)?,
            )
        }
    };
    run(&prepared, section, &out)
}

/// Finds a wrong output folder before any work: new, empty or distill's (or allowed by
/// `overwrite`), and neither the model nor a folder above it.
pub(crate) fn check_output_folder(out: &Path, model: &str, overwrite: bool) -> Result<()> {
    let policy = distill_files::FolderPolicy {
        overwrite,
        inputs: crate::run_dir::local_inputs([Path::new(model)]),
    };
    distill_files::check_folder_target(out, &policy)?;
    Ok(())
}

/// The learner's settings for a heal pass of `length` at `lr` (default: the run's), from the
/// run's own.
pub(crate) fn heal_training(run: &Training, length: Length, lr: Option<f64>) -> Training {
    Training {
        length: match length {
            Length::Steps(n) => distill_train::training::Length::Steps(n),
            Length::Epochs(n) => distill_train::training::Length::Epochs(n),
        },
        lr: lr.unwrap_or(run.lr),
        ..run.clone()
    }
}

/// Trains `task` as a heal pass: the learner, with the pass's hook after every optimiser step
/// (it keeps pruned weights at zero) and progress to `observer`.
pub(crate) fn heal(
    training: &Training,
    task: &mut dyn Task,
    after_step: StepHook,
    observer: &dyn Observer,
) -> std::result::Result<(), CompressError> {
    let out = Learner::new(training, "heal")
        .observer(observer)
        .after_step(Box::new(move |vars| {
            after_step(vars).map_err(|source| TrainError::Tensor {
                context: "heal: after-step hook".into(),
                source,
            })
        }))
        .fit(task, false)
        .map_err(external)?;
    tracing::info!(steps = out.steps, seconds = out.seconds, "healed");
    Ok(())
}

/// The variables of a new `VarMap` holding copies of `map`'s tensors (a model to train).
pub(crate) fn varmap_of(map: &TensorMap) -> Result<VarMap> {
    let vm = VarMap::new();
    {
        let mut data = distill_models::weights::vars(&vm);
        for (n, t) in &map.tensors {
            data.insert(n.clone(), Var::from_tensor(&t.copy()?)?);
        }
    }
    Ok(vm)
}

/// Copies trained variables back into `map` (the heal pass's hook kept pruned zeros zero).
pub(crate) fn take_back(map: &mut TensorMap, vm: &VarMap) {
    let data = distill_models::weights::vars(vm);
    for (n, t) in map.tensors.iter_mut() {
        if let Some(v) = data.get(n) {
            *t = v.as_tensor().detach();
        }
    }
}

/// The `config.json` of a model folder.
pub(crate) fn read_config_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        .context("config.json")
}

//! A causal-LM job: teacher → data → student → the learner → Hugging Face export → report
//! (→ the `compress:` section).

use std::path::PathBuf;

use candle_core::DType;
use distill_compress::pipeline::{smallest_within_budget, Row};
use distill_models::{LlamaConfig, Model, WeightSource};
use distill_student::vocab::{RestrictedModel, RowSelectedWeights};
use distill_student::{build_student, save_hf, HfExport, InitConfig};
use distill_teacher::{LoadedTokenizer, Teacher, TeacherFiles, TeacherSource};
use distill_train::batch_probe::largest_batch;
use distill_train::data::BlockSet;
use distill_train::parallel::{Communicator, Single};
use distill_train::scoring::{agreement, perplexity, scoring_speed, top1_tokens};
use distill_train::tasks::CausalLm;
use distill_train::{Learner, Training};

use crate::compression::{self, Compression};
use crate::data::{build_data_from, split_run_documents, write_split};
use crate::error::{Context, Error, Result};
use crate::group::load_and_join;
use crate::job::RunConfig;
use crate::options::RunOptions;
use crate::report::compress::Reference;
use crate::report::{ArtifactStats, ModelStats, RunReport};
use crate::run_dir::{local_inputs, RunDir, RunDirOptions};
use crate::teacher_cache::{open_for_run, run_identity};
use crate::vocab::trim_for_run;

/// The teacher of a run: loaded and run online, or only its files (tokenizer, config, weights
/// for initialisation) when its outputs come from a cache.
enum TeacherSide {
    Online(Box<Teacher>),
    Cached(Box<TeacherFiles>),
}

impl TeacherSide {
    fn tokenizer(&self) -> &LoadedTokenizer {
        match self {
            TeacherSide::Online(t) => &t.tokenizer,
            TeacherSide::Cached(f) => &f.tokenizer,
        }
    }

    fn config(&self) -> Result<&LlamaConfig> {
        Ok(match self {
            TeacherSide::Online(t) => t.language_model().context("teacher.source")?.1,
            TeacherSide::Cached(f) => &f.config,
        })
    }

    /// The network, when the teacher runs online.
    fn model(&self) -> Result<Option<&dyn Model>> {
        Ok(match self {
            TeacherSide::Online(t) => Some(t.language_model().context("teacher.source")?.0),
            TeacherSide::Cached(_) => None,
        })
    }

    fn dense_weights(&self, dtype: DType) -> Result<Box<dyn WeightSource>> {
        Ok(match self {
            TeacherSide::Online(t) => t.dense_weights(dtype)?,
            TeacherSide::Cached(f) => f.dense_weights(dtype)?,
        })
    }

    fn bytes_on_disk(&self) -> u64 {
        match self {
            TeacherSide::Online(t) => t.bytes_on_disk(),
            TeacherSide::Cached(f) => f.bytes_on_disk(),
        }
    }
}

/// What a causal-LM run produced.
#[derive(Debug)]
pub struct LmRun {
    pub run_dir: PathBuf,
    /// This process's rank in its data-parallel group (0 when it trained alone); only rank 0
    /// exports, reports and compresses.
    pub rank: usize,
    /// Steps trained, over all sessions of the run.
    pub steps: usize,
    /// Stopped by the stop flag (a checkpoint was written; `--resume` continues).
    pub interrupted: bool,
    /// The report, unless interrupted.
    pub report: Option<RunReport>,
    /// The exported student (Hugging Face layout), unless interrupted.
    pub student: Option<PathBuf>,
    pub compression: Option<Compression>,
}

/// Runs a causal-LM job.
///
/// As one rank of a data-parallel group (`opts.launch`), it trains its share of every batch on
/// the device of its `LOCAL_RANK`; rank 0 alone prepares the run folder, writes checkpoints and
/// metrics, and exports, reports and compresses the student, while the other ranks return after
/// training (their [`LmRun::rank`] is not 0 and they have no report).
pub fn run(cfg: &RunConfig, opts: &RunOptions) -> Result<LmRun> {
    let run_dir = cfg.run_dir();
    let resumed_batch = resumed_batch_size(cfg, opts);
    let cfg = resumed_batch.as_ref().unwrap_or(cfg);
    let (load, comm) = load_and_join(&cfg.teacher, opts.launch.as_ref())?;
    let device = load.device.clone();
    let rank = comm.as_ref().map_or(0, |c| c.rank());
    let mut run_folder = if rank == 0 {
        let mut inputs = vec![std::path::Path::new(&cfg.teacher.source)];
        inputs.extend(cfg.data.source.paths());
        if let Some(c) = &cfg.teacher.cache {
            inputs.push(std::path::Path::new(c.dir()));
        }
        Some(RunDir::prepare(
            cfg,
            &run_dir,
            &RunDirOptions {
                resume: opts.resume,
                overwrite: opts.overwrite,
                inputs: local_inputs(inputs),
            },
        )?)
    } else {
        None
    };
    if let Some(c) = &comm {
        // The others start once the folder is there (and an old one is gone).
        c.barrier()?;
    }
    let source = TeacherSource::parse(&cfg.teacher.source).context("teacher.source")?;
    let side = if cfg.teacher.cache.is_some() {
        tracing::info!(source = %source, "reading the teacher's files (its outputs come from the cache)");
        TeacherSide::Cached(Box::new(TeacherFiles::open(&source, &load)?))
    } else {
        tracing::info!(source = %source, "loading the teacher");
        TeacherSide::Online(Box::new(Teacher::load(&source, &load)?))
    };
    let teacher_cfg = side.config()?.clone();
    let split = split_run_documents(cfg)?;
    if rank == 0 {
        write_split(cfg, &split, &run_dir.join("split.json"))?;
    }
    let vocab = match &cfg.student.vocab {
        Some(_) if cfg.teacher.cache.is_some() => {
            return Err(Error::Invalid(
                "student.vocab: a trimmed vocabulary cannot train from teacher.cache (the cache holds the full vocabulary's top-k); drop one of them".into(),
            ))
        }
        Some(v) => Some(trim_for_run(&split, v, side.tokenizer(), teacher_cfg.vocab_size)?),
        None => None,
    };
    let tokenizer = vocab.as_ref().map_or(side.tokenizer(), |v| &v.tokenizer);
    // The teacher as the student sees it: over the trimmed vocabulary, when there is one.
    let view_cfg = match &vocab {
        Some(v) => LlamaConfig {
            vocab_size: v.trim.len(),
            bos_token_id: tokenizer.info.bos_token_id.map(Into::into),
            eos_token_id: tokenizer.info.eos_token_id.map(Into::into),
            ..teacher_cfg.clone()
        },
        None => teacher_cfg.clone(),
    };

    let (train, valid) = build_data_from(cfg, &split, tokenizer, view_cfg.vocab_size)?;
    drop(split);
    tracing::info!(
        train_blocks = train.len(),
        validation_blocks = valid.len(),
        block = train.block_size,
        "data"
    );
    let cache = match &side {
        TeacherSide::Cached(files) => {
            let identity = run_identity(cfg, &files.files, tokenizer, &load)?;
            let cache = open_for_run(cfg, &identity, teacher_cfg.vocab_size, &train, &valid)?;
            tracing::info!(
                dir = %cache.dir().display(),
                top_k = cache.manifest().layout.top_k,
                bytes_per_position = cache.bytes_per_token(),
                "training from the teacher cache"
            );
            Some(cache)
        }
        TeacherSide::Online(_) => None,
    };

    let dense = match cfg.student.init {
        InitConfig::FromTeacher { .. } if !opts.resume => Some(side.dense_weights(DType::F32)?),
        _ => None,
    };
    let rows = match (&vocab, &dense) {
        (Some(v), Some(d)) => Some(RowSelectedWeights::new(
            d.as_ref(),
            &v.trim.kept,
            teacher_cfg.vocab_size,
            &["model.embed_tokens.weight", "lm_head.weight"],
        )?),
        _ => None,
    };
    let init_source: Option<&dyn WeightSource> = match &rows {
        Some(r) => Some(r),
        None => dense.as_deref(),
    };
    let spec = if opts.resume {
        // The checkpoint holds the weights; only the shape matters here.
        distill_student::StudentConfig {
            init: InitConfig::Random { seed: 0 },
            ..cfg.student.clone()
        }
    } else {
        cfg.student.clone()
    };
    let mut student = build_student(&view_cfg, init_source, &spec, &device).context("student")?;
    if let Some(dt) = cfg.student.matmul_dtype().map_err(Error::Job)? {
        tracing::info!(dtype = ?dt, "student: the layers multiply in {dt:?} over f32 weights");
        student.model.set_matmul_dtype(Some(dt));
    }
    drop(rows);
    drop(dense);
    if student.config.vocab_size != view_cfg.vocab_size {
        return Err(Error::Invalid(format!(
            "student vocabulary ({}) differs from the teacher's ({}); a vocabulary mapping is not supported",
            student.config.vocab_size, view_cfg.vocab_size
        )));
    }
    tracing::info!(
        layers = student.config.num_hidden_layers,
        hidden = student.config.hidden_size,
        params = student.config.param_count(),
        "student"
    );

    let restricted = match (&vocab, side.model()?) {
        (Some(v), Some(m)) => Some(RestrictedModel::new(m, &v.trim.kept)?),
        _ => None,
    };
    let teacher_lm: Option<&dyn Model> = match &restricted {
        Some(r) => Some(r),
        None => side.model()?,
    };
    let training = choose_batch_size(
        cfg,
        comm.as_deref(),
        (&student.model, &student.varmap),
        teacher_lm,
        (&train, &valid),
        &device,
    )?;
    let mut task = match &cache {
        Some(cache) => CausalLm::from_cache(
            &student.model,
            &student.varmap,
            cache,
            &cfg.distill,
            &training,
            &train,
            &valid,
            &device,
        )?,
        None => CausalLm::new(
            &student.model,
            &student.varmap,
            teacher_lm,
            &cfg.distill,
            &training,
            &train,
            &valid,
            &device,
        )?,
    };
    // Training begins: the folder now keeps whatever happens.
    if let Some(f) = run_folder.as_mut() {
        f.keep();
    }
    let outcome = Learner::new(&training, "train")
        .checkpoints(run_dir.join("checkpoints"))
        .metrics(run_dir.join("metrics.jsonl"))
        .observer(opts.observer)
        .stop_flag(&opts.stop)
        .device(&device)
        .data_parallel(comm.as_deref().unwrap_or(&Single))
        .fit(&mut task, opts.resume)?;
    let teacher_val_ppl = task.teacher_val_ppl();
    drop(task);
    if !cfg.distill.needs_teacher() {
        tracing::info!("alpha = 0: the teacher was used for evaluation only");
    }
    if outcome.interrupted || rank != 0 {
        return Ok(LmRun {
            run_dir,
            rank,
            steps: outcome.steps,
            interrupted: outcome.interrupted,
            report: None,
            student: None,
            compression: None,
        });
    }

    let final_dir = run_dir.join("final");
    let bytes = save_hf(
        &final_dir,
        &HfExport {
            config: &student.config,
            varmap: &student.varmap,
            tokenizer: &tokenizer.tokenizer,
            bos_token_id: tokenizer.info.bos_token_id,
            eos_token_id: tokenizer.info.eos_token_id,
            chat_template: tokenizer.chat_template.as_deref(),
        },
    )?;

    let last = outcome.evals.last();
    let batch = training.batch_size;
    let mut report = RunReport {
        run: cfg.output.name.clone(),
        teacher: ModelStats {
            name: source.to_string(),
            parameters: teacher_cfg.param_count(),
            embedding_parameters: teacher_cfg.vocab_size * teacher_cfg.hidden_size,
            bytes_on_disk: side.bytes_on_disk(),
            val_ppl: teacher_val_ppl,
            tokens_per_second: match (teacher_lm, &cache) {
                (Some(lm), _) => scoring_speed(lm, &valid, batch)?,
                // Measured while the cache was made.
                (None, Some(c)) => c.manifest().teacher_tokens_per_second.unwrap_or(0.0),
                (None, None) => 0.0,
            },
        },
        student: ModelStats {
            name: final_dir.display().to_string(),
            parameters: student.config.param_count(),
            embedding_parameters: student.config.vocab_size * student.config.hidden_size,
            bytes_on_disk: bytes,
            val_ppl: last.and_then(|e| e.get("val_ppl")),
            tokens_per_second: scoring_speed(&student.model, &valid, batch)?,
        },
        top1_agreement: last.and_then(|e| e.get("top1_agreement")),
        val_kl: last.and_then(|e| e.get("val_kl")),
        steps: outcome.steps,
        train_tokens: outcome.units,
        train_seconds: outcome.seconds,
        train_tokens_per_second: outcome.units_per_second,
        student_layers_from_teacher: student.layer_map.clone(),
        loss: cfg.distill.loss.clone(),
        alpha: cfg.distill.alpha,
        temperature: cfg.distill.temperature,
        artifact: None,
        vocab: vocab.as_ref().map(|v| v.stats.clone()),
    };
    report.write(&run_dir, &outcome)?;
    let compression = match &cfg.compress {
        Some(c) => {
            // The teacher's top-1 tokens on the report's validation blocks, for the artifact's
            // agreement, before the teacher is let go to make room for compression.
            let blocks = &valid.blocks[..training.eval_block_count(valid.len())];
            let teacher_top1 = teacher_lm
                .map(|lm| top1_tokens(lm, blocks.iter().map(Vec::as_slice)))
                .transpose()?;
            drop(restricted);
            drop(side);
            let model = final_dir.display().to_string();
            let mut prepared =
                compression::for_causal_lm(&model, cfg, c.eval_blocks, c.calibration_blocks, opts)?;
            prepared.teacher = report.teacher.val_ppl.map(|q| Reference {
                name: "teacher".into(),
                bytes: report.teacher.bytes_on_disk,
                quality: q,
            });
            let done = compression::run(&prepared, c, &run_dir.join("compressed"))?;
            drop(prepared);
            if let Some(a) =
                measure_artifact(&done, blocks, teacher_top1.as_deref(), &valid, batch)?
            {
                report.artifact = Some(a);
                report.write(&run_dir, &outcome)?;
            }
            compression::append_to_report(&done, &run_dir)?;
            Some(done)
        }
        None => None,
    };
    Ok(LmRun {
        run_dir,
        rank,
        steps: outcome.steps,
        interrupted: false,
        report: Some(report),
        student: Some(final_dir),
        compression,
    })
}

/// For a resumed run with `batch_size: auto`: the config with the batch size the run chose
/// when it started (its `config.yaml`), so that it reads the data it would have read.
fn resumed_batch_size(cfg: &RunConfig, opts: &RunOptions) -> Option<RunConfig> {
    if !(opts.resume && cfg.train.batch_auto) {
        return None;
    }
    let text = std::fs::read_to_string(cfg.run_dir().join("config.yaml")).ok()?;
    let crate::Job::CausalLm(started) = crate::parse_job(&text).ok()? else {
        return None;
    };
    if started.train.batch_auto {
        return None;
    }
    tracing::info!(
        batch_size = started.train.batch_size,
        "batch_size auto: the batch the run started with"
    );
    let mut cfg = cfg.clone();
    cfg.train.batch_size = started.train.batch_size;
    cfg.train.batch_auto = false;
    Some(cfg)
}

/// The run's training settings with `batch_size` chosen when the config says `auto`: on a
/// GPU, the largest micro-batch whose step fits (each rank of a group tries its own device,
/// the group takes the smallest, times its ranks); on a CPU, the default. Rank 0 writes the
/// choice into the run's `config.yaml`.
fn choose_batch_size(
    cfg: &RunConfig,
    comm: Option<&dyn Communicator>,
    (student, varmap): (&dyn Model, &candle_nn::VarMap),
    teacher: Option<&dyn Model>,
    (train, valid): (&BlockSet, &BlockSet),
    device: &candle_core::Device,
) -> Result<Training> {
    let mut training = cfg.train.clone();
    if !training.batch_auto {
        return Ok(training);
    }
    let run_dir = cfg.run_dir();
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world()));
    let rows = if device.is_cpu() {
        tracing::info!(
            batch_size = training.batch_size,
            "batch_size auto: on the CPU memory is not what limits a batch; the default (write a number to choose)"
        );
        training.batch_size
    } else {
        let mut probe = CausalLm::new(
            student,
            varmap,
            teacher,
            &cfg.distill,
            &training,
            train,
            valid,
            device,
        )?;
        let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        let started = std::time::Instant::now();
        let p = largest_batch(
            &mut probe,
            device,
            train.len().clamp(1, 1024),
            2 * params,
            training.seed,
        )?;
        let mine = p.rows;
        let rows = match comm {
            Some(c) if world > 1 => {
                let mut v = vec![0f32; world];
                v[rank] = mine as f32;
                let all =
                    c.all_reduce_sum(&candle_core::Tensor::new(v, &candle_core::Device::Cpu)?)?;
                let least = all.to_vec1::<f32>()?.into_iter().fold(f32::MAX, f32::min) as usize;
                least * world
            }
            _ => mine,
        };
        tracing::info!(
            batch_size = rows,
            per_rank = mine,
            limited_by_memory = p.limited_by_memory,
            tries = p.tries,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "batch_size auto: the largest micro-batch whose step fits"
        );
        rows
    };
    training.batch_size = rows;
    training.batch_auto = false;
    if rank == 0 {
        let mut resolved = cfg.clone();
        resolved.train = training.clone();
        let text = serde_yaml::to_string(&resolved).map_err(|e| Error::Job(e.to_string()))?;
        let path = run_dir.join("config.yaml");
        distill_files::write_file(&path, text.as_bytes()).map_err(crate::error::Error::from)?;
    }
    Ok(training)
}

/// The edge artifact of a compress section — its smallest GGUF file within the headline's
/// quality budget — measured as a runtime runs it (quantised matrices through QMatMul) on the
/// report's validation `blocks`: perplexity, agreement with the teacher's `teacher_top1`
/// tokens, scoring speed.
fn measure_artifact(
    c: &Compression,
    blocks: &[Vec<u32>],
    teacher_top1: Option<&[Vec<u32>]>,
    valid: &BlockSet,
    batch: usize,
) -> Result<Option<ArtifactStats>> {
    let is_gguf = |r: &Row| r.artifact.as_deref().is_some_and(|p| p.ends_with(".gguf"));
    let Some(row) = smallest_within_budget(&c.outcome.rows, true, is_gguf) else {
        tracing::warn!(
            "no GGUF variant is within 3% of the student's perplexity: the report has no artifact"
        );
        return Ok(None);
    };
    let path = row
        .artifact
        .as_deref()
        .expect("a GGUF row has its artifact");
    let q = Teacher::load(
        &TeacherSource::Gguf(PathBuf::from(path)),
        &distill_teacher::LoadOptions {
            device: candle_core::Device::Cpu,
            dtype: DType::F32,
            gguf_mode: distill_teacher::GgufCompute::Quantized,
            ..Default::default()
        },
    )?;
    let (m, cfg) = q.language_model().context("compress artifact")?;
    let (ppl, _) = perplexity(m, blocks.iter().map(Vec::as_slice))?;
    let top1 = match teacher_top1 {
        Some(t) => Some(agreement(
            &top1_tokens(m, blocks.iter().map(Vec::as_slice))?,
            t,
        )),
        None => None,
    };
    Ok(Some(ArtifactStats {
        stats: ModelStats {
            name: path.to_string(),
            parameters: cfg.param_count(),
            embedding_parameters: cfg.vocab_size * cfg.hidden_size,
            bytes_on_disk: std::fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(row.bytes),
            val_ppl: Some(ppl),
            tokens_per_second: scoring_speed(m, valid, batch)?,
        },
        top1_agreement: top1,
        steps: row.steps.clone(),
    }))
}

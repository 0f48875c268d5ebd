use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use distill_student::{build_student, save_hf, HfExport, InitConfig};
use distill_teacher::{LoadedTokenizer, Teacher, TeacherModel, TeacherSource};
use distill_train::data::{load_documents, pack_blocks, split_documents, BlockSet};
use distill_train::trainer::{LogitsModel, Trainer};

use crate::config::{self, RunConfig};
use crate::report::{self, ModelStats, RunReport};

#[derive(clap::Args)]
pub struct Args {
    /// The run's YAML config.
    config: PathBuf,
    /// Continue the run from its newest checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Delete an existing run folder of the same name and start over.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match config::load_job(&a.config)? {
        config::Job::CausalLm(cfg) => run_causal_lm(*cfg, a),
        config::Job::Classification(cfg) => {
            if a.resume {
                bail!("--resume: classification runs restart from the beginning (they are short); use --overwrite");
            }
            let run_dir = cfg.run_dir();
            prepare_run_dir(&*cfg, &run_dir, false, a.overwrite)?;
            super::classify::run(&cfg, &run_dir, interrupt_flag())
        }
    }
}

/// Set by Ctrl-C; a second Ctrl-C while the checkpoint is written exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (Ctrl-C again to abort)");
        });
    }
    stop
}

fn run_causal_lm(cfg: RunConfig, a: Args) -> anyhow::Result<()> {
    let run_dir = cfg.run_dir();
    prepare_run_dir(&cfg, &run_dir, a.resume, a.overwrite)?;
    let stop = interrupt_flag();

    let opts = cfg.teacher.load_options().context("teacher")?;
    let source = TeacherSource::parse(&cfg.teacher.source).context("teacher.source")?;
    tracing::info!(source = %source, "loading the teacher");
    let teacher = Teacher::load(&source, &opts)?;
    let (teacher_lm, teacher_cfg): (&dyn LogitsModel, _) = match &teacher.model {
        TeacherModel::Llama(m) => (m, m.config().clone()),
        TeacherModel::Ggml(m) => (m, m.config().clone()),
        TeacherModel::Bert(_) => bail!("teacher.source: a causal-LM run needs a decoder teacher (Llama family); {source} is an encoder"),
    };

    let (train, valid) = build_data(&cfg, &teacher.tokenizer, teacher_cfg.vocab_size)?;
    tracing::info!(
        train_blocks = train.len(),
        validation_blocks = valid.len(),
        block = train.block_size,
        "data"
    );

    let dense = match cfg.student.init {
        InitConfig::FromTeacher { .. } if !a.resume => Some(teacher.dense_weights(DType::F32)?),
        _ => None,
    };
    let spec = if a.resume {
        // The checkpoint holds the weights; only the shape matters here.
        distill_student::StudentConfig {
            init: InitConfig::Random { seed: 0 },
            ..cfg.student.clone()
        }
    } else {
        cfg.student.clone()
    };
    let student =
        build_student(&teacher_cfg, dense.as_deref(), &spec, &opts.device).context("student")?;
    drop(dense);
    if student.config.vocab_size != teacher_cfg.vocab_size {
        bail!(
            "student vocabulary ({}) differs from the teacher's ({}); a vocabulary mapping is not supported",
            student.config.vocab_size,
            teacher_cfg.vocab_size
        );
    }
    tracing::info!(
        layers = student.config.num_hidden_layers,
        hidden = student.config.hidden_size,
        params = student.config.param_count(),
        "student"
    );

    let needs_teacher = cfg.distill.needs_teacher();
    let outcome = Trainer {
        train_cfg: &cfg.train,
        distill: &cfg.distill,
        student: &student.model,
        varmap: &student.varmap,
        student_hidden_size: student.config.hidden_size,
        teacher: Some(teacher_lm),
        teacher_hidden_size: teacher_cfg.hidden_size,
        train: &train,
        valid: &valid,
        run_dir: run_dir.clone(),
        device: opts.device.clone(),
        stop: stop.clone(),
        stop_at: None,
        progress: true,
    }
    .run(a.resume)?;
    if !needs_teacher {
        tracing::info!("alpha = 0: the teacher was used for evaluation only");
    }
    if outcome.interrupted {
        println!(
            "interrupted at step {}; continue with: distill run {} --resume",
            outcome.steps,
            a.config.display()
        );
        return Ok(());
    }

    let final_dir = run_dir.join("final");
    let bytes = save_hf(
        &final_dir,
        &HfExport {
            config: &student.config,
            varmap: &student.varmap,
            tokenizer: &teacher.tokenizer.tokenizer,
            bos_token_id: teacher.tokenizer.info.bos_token_id,
            eos_token_id: teacher.tokenizer.info.eos_token_id,
            chat_template: teacher.tokenizer.chat_template.as_deref(),
        },
    )?;

    let last = outcome.evals.last();
    let report = RunReport {
        run: cfg.output.name.clone(),
        teacher: ModelStats {
            name: source.to_string(),
            parameters: teacher_cfg.param_count(),
            embedding_parameters: teacher_cfg.vocab_size * teacher_cfg.hidden_size,
            bytes_on_disk: teacher.bytes_on_disk(),
            val_ppl: outcome.teacher_val_ppl,
            tokens_per_second: scoring_speed(
                teacher_lm,
                &valid,
                cfg.train.batch_size,
                &opts.device,
            )?,
        },
        student: ModelStats {
            name: final_dir.display().to_string(),
            parameters: student.config.param_count(),
            embedding_parameters: student.config.vocab_size * student.config.hidden_size,
            bytes_on_disk: bytes,
            val_ppl: last.map(|e| e.val_ppl),
            tokens_per_second: scoring_speed(
                &student.model,
                &valid,
                cfg.train.batch_size,
                &opts.device,
            )?,
        },
        top1_agreement: last.and_then(|e| e.top1_agreement),
        val_kl: last.and_then(|e| e.val_kl),
        steps: outcome.steps,
        train_tokens: outcome.train_tokens,
        train_seconds: outcome.seconds,
        train_tokens_per_second: outcome.tokens_per_second,
        student_layers_from_teacher: student.layer_map.clone(),
        loss: cfg.distill.loss.clone(),
        alpha: cfg.distill.alpha,
        temperature: cfg.distill.temperature,
    };
    report::write(&run_dir, &report, &outcome)?;
    println!("\n{}", report.table());
    println!("report: {}", run_dir.join("report.md").display());
    println!("student: {}", final_dir.display());
    if let Some(c) = &cfg.compress {
        drop(teacher);
        let subject = super::pipeline::lm::LmSubject::new(
            &final_dir.display().to_string(),
            &cfg,
            c.eval_blocks,
        )?;
        super::pipeline::run_in(&subject, c, &run_dir)?;
    }
    Ok(())
}

fn prepare_run_dir(
    cfg: &impl serde::Serialize,
    run_dir: &std::path::Path,
    resume: bool,
    overwrite: bool,
) -> anyhow::Result<()> {
    if run_dir.exists() {
        if overwrite {
            std::fs::remove_dir_all(run_dir)
                .with_context(|| format!("removing {}", run_dir.display()))?;
        } else if !resume {
            bail!(
                "{} exists: pass --resume to continue that run or --overwrite to start over",
                run_dir.display()
            );
        }
    } else if resume {
        bail!("--resume: {} does not exist", run_dir.display());
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let resolved = serde_yaml::to_string(cfg)?;
    let path = run_dir.join("config.yaml");
    if resume {
        if let Ok(old) = std::fs::read_to_string(&path) {
            if old != resolved {
                tracing::warn!("the config differs from the one the run started with; continuing with the new one");
            }
        }
    }
    distill_train::checkpoint::write_atomic(&path, resolved.as_bytes())
        .with_context(|| path.display().to_string())
}

/// Documents → split by whole documents → tokenised and packed blocks.
pub(crate) fn build_data(
    cfg: &RunConfig,
    tokenizer: &LoadedTokenizer,
    vocab: usize,
) -> anyhow::Result<(BlockSet, BlockSet)> {
    let docs = load_documents(&cfg.data.source).context("data.source")?;
    let split =
        split_documents(docs, cfg.data.validation_fraction, cfg.data.seed).context("data")?;
    let tok = &tokenizer.tokenizer;
    let sep = match &cfg.data.separator_token {
        Some(t) => tok.token_to_id(t).with_context(|| format!("data.separator_token: `{t}` is not in the vocabulary"))?,
        None => tok
            .token_to_id("<|endoftext|>")
            .or(tokenizer.info.eos_token_id)
            .context("data.separator_token: the tokenizer has neither <|endoftext|> nor an EOS token; name one")?,
    };
    let encode = |text: &str| -> Result<Vec<u32>, String> {
        let ids = tok
            .encode_fast(text, false)
            .map_err(|e| e.to_string())?
            .get_ids()
            .to_vec();
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(bad) => Err(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )),
            None => Ok(ids),
        }
    };
    let train = pack_blocks(&split.train, cfg.data.block_size, sep, encode)
        .context("data (training documents)")?;
    let valid = if split.validation.is_empty() {
        bail!("data.validation_fraction: no validation documents; evaluation needs some");
    } else {
        pack_blocks(&split.validation, cfg.data.block_size, sep, encode)
            .context("data (validation documents)")?
    };
    Ok((train, valid))
}

/// Full-sequence scoring throughput over up to two batches of validation blocks.
fn scoring_speed(
    model: &dyn LogitsModel,
    valid: &BlockSet,
    batch: usize,
    device: &candle_core::Device,
) -> anyhow::Result<f64> {
    let n = valid.len().min(batch * 2).max(1);
    let start = Instant::now();
    let mut tokens = 0;
    for chunk in valid.blocks[..n].chunks(batch) {
        let ids: Vec<u32> = chunk.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(ids, (chunk.len(), valid.block_size), device)?;
        let (logits, _) = model.logits(&ids, false)?;
        logits.sum_all()?.to_scalar::<f32>()?;
        tokens += chunk.len() * valid.block_size;
    }
    Ok(tokens as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

//! The training stage: the batch size settled (`auto`: the largest micro-batch whose step fits
//! on a GPU, the default on a CPU), the resolved config written into the run folder, and the
//! learner run on the causal-LM task — against the online teacher or its cached targets.

use candle_core::Device;
use distill_models::Model;
use distill_student::LlamaStudent;
use distill_train::batch_probe::largest_batch;
use distill_train::parallel::{Communicator, Single};
use distill_train::tasks::{CausalLm, CausalLmSetup, CrossSetup, Student, TeacherSignal};
use distill_train::{LearnOutcome, Learner, Training};

use super::data::RunData;
use super::prepare::Prepared;
use crate::error::Result;
use crate::options::RunOptions;

/// What training produced.
pub(crate) struct Trained {
    pub(crate) outcome: LearnOutcome,
    /// The settings it trained with (the batch size chosen).
    pub(crate) training: Training,
    /// The teacher's validation perplexity, when the task measured it.
    pub(crate) teacher_val_ppl: Option<f64>,
    /// Across tokenizers: the teacher's validation bits per byte over its own tokens.
    pub(crate) teacher_val_bits_per_byte: Option<f64>,
}

/// Trains `student` on `data` against `teacher` (or the data's cache).
pub(crate) fn fit(
    run: &mut Prepared,
    teacher: Option<&dyn Model>,
    data: &RunData,
    student: &LlamaStudent,
    opts: &RunOptions,
) -> Result<Trained> {
    let training = settle_batch_size(run, teacher, data, student)?;
    if let Some(folder) = &run.folder {
        let mut resolved = run.cfg.clone();
        resolved.train = training.clone();
        folder.write_config(&resolved, run.resume)?;
    }
    let device = run.load.device.clone();
    run.keep_folder();
    let mut task = task(run, teacher, data, student, &training)?;
    let outcome = Learner::new(&training, "train")
        .checkpoints(run.run_dir.join("checkpoints"))
        .metrics(run.run_dir.join("metrics.jsonl"))
        .observer(opts.observer)
        .stop_flag(&opts.stop)
        .device(&device)
        .data_parallel(run.comm().unwrap_or(&Single))
        .fit(&mut task, run.resume)?;
    let teacher_val_ppl = task.teacher_val_ppl();
    let teacher_val_bits_per_byte = task.teacher_val_bits_per_byte();
    if !run.cfg.distill.needs_teacher() {
        tracing::info!("alpha = 0: the teacher was used for evaluation only");
    }
    Ok(Trained {
        outcome,
        training,
        teacher_val_ppl,
        teacher_val_bits_per_byte,
    })
}

/// The causal-LM task: against the cached targets when the data has a cache, else against
/// the online teacher.
fn task<'a>(
    run: &'a Prepared,
    teacher: Option<&'a dyn Model>,
    data: &'a RunData,
    student: &'a LlamaStudent,
    training: &'a Training,
) -> Result<CausalLm<'a>> {
    let device = &run.load.device;
    Ok(match &data.cache {
        Some(cache) => CausalLm::new(CausalLmSetup {
            student: Student {
                model: &student.model,
                varmap: &student.varmap,
            },
            teacher: Some(TeacherSignal::Cached(cache)),
            distill: &run.cfg.distill,
            training,
            train: &data.train,
            valid: &data.valid,
            device: device.clone(),
            cross: None,
        })?,
        None => CausalLm::new(CausalLmSetup {
            student: Student {
                model: &student.model,
                varmap: &student.varmap,
            },
            teacher: teacher.map(TeacherSignal::Online),
            distill: &run.cfg.distill,
            training,
            train: &data.train,
            valid: &data.valid,
            device: device.clone(),
            cross: data.cross.as_ref().map(|c| CrossSetup {
                vocab: &c.run.vocab,
                train: &c.run.train,
                valid: &c.run.valid,
            }),
        })?,
    })
}

/// The run's training settings with `batch_size` chosen when the config says `auto`: on a
/// GPU, the largest micro-batch whose step fits (each rank of a group tries its own device,
/// the group takes the smallest, times its ranks); on a CPU, the default.
fn settle_batch_size(
    run: &Prepared,
    teacher: Option<&dyn Model>,
    data: &RunData,
    student: &LlamaStudent,
) -> Result<Training> {
    let cfg = &run.cfg;
    let mut training = cfg.train.clone();
    if !training.batch_auto {
        return Ok(training);
    }
    let device = &run.load.device;
    let rows = if device.is_cpu() {
        tracing::info!(
            batch_size = training.batch_size,
            "batch_size auto: on the CPU memory is not what limits a batch; the default (write a number to choose)"
        );
        training.batch_size
    } else {
        probe_batch_size(run, teacher, data, student, &training, device)?
    };
    training.batch_size = rows;
    training.batch_auto = false;
    Ok(training)
}

/// The largest micro-batch whose step fits on `device` (the group's smallest, times its
/// ranks).
fn probe_batch_size<'a>(
    run: &'a Prepared,
    teacher: Option<&'a dyn Model>,
    data: &'a RunData,
    student: &'a LlamaStudent,
    training: &'a Training,
    device: &Device,
) -> Result<usize> {
    // `batch_size: auto` never trains from a cache: the task runs the teacher online.
    let mut probe = task(run, teacher, data, student, training)?;
    let params: usize = student
        .varmap
        .all_vars()
        .iter()
        .map(|v| v.elem_count())
        .sum();
    let started = std::time::Instant::now();
    let p = largest_batch(
        &mut probe,
        device,
        data.train.len().clamp(1, 1024),
        2 * params,
        training.seed,
    )?;
    let mine = p.rows;
    let rows = match run.comm() {
        Some(c) if c.world() > 1 => least_over_group(c, mine)? * c.world(),
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
    Ok(rows)
}

/// The smallest of every rank's `mine`.
fn least_over_group(c: &dyn Communicator, mine: usize) -> Result<usize> {
    let mut v = vec![0f32; c.world()];
    v[c.rank()] = mine as f32;
    let all = c.all_reduce_sum(&candle_core::Tensor::new(v, &candle_core::Device::Cpu)?)?;
    Ok(all.to_vec1::<f32>()?.into_iter().fold(f32::MAX, f32::min) as usize)
}

//! A classification job as stages that hand their output forward: prepare (the run folder
//! made and locked) → data (split) → teacher (read; fine-tuned or its own head) → the
//! teacher's signal → student (distilled; optionally the same student on labels alone) →
//! evaluation of the exported models on the test split → compress (the `compress:` section)
//! → report, written once. Every training stage is the learner with its own checkpoints, so
//! an interrupted run resumes where it stopped: finished stages are restored from their last
//! checkpoint, the interrupted one continues, later ones start.

mod data;
mod evaluate;
mod prepare;
mod stages;
mod students;
mod teacher;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use distill_models::{SafetensorsWeights, VarMapWeights, WeightSource};
use distill_student::{build_bert_student, BertStudent, InitConfig};
use distill_train::scoring::{argmaxes, predict_logits};
use distill_train::tasks::TeacherSignal;

use crate::compression::{self, Compression};
use crate::error::{Context, Result};
use crate::options::RunOptions;
use crate::report::{summary, ClassificationReport, CompressionSection, DataReport, StageReport};
use crate::ClassifyConfig;

use data::{Encoded, Labelled};
use prepare::Prepared;
use stages::labels_only;
use students::StudentStage;
use teacher::{Obtained, TeacherFolder, TeacherStage};

/// What a classification run produced.
#[derive(Debug)]
pub struct ClsRun {
    pub run_dir: PathBuf,
    /// Stopped by the stop flag: where the best model so far was saved.
    pub interrupted: Option<String>,
    /// The report, unless interrupted.
    pub report: Option<ClassificationReport>,
    /// The exported student, unless interrupted before it.
    pub student: Option<PathBuf>,
    pub compression: Option<Compression>,
}

impl ClsRun {
    fn interrupted(run_dir: PathBuf, msg: String, student: Option<PathBuf>) -> Self {
        Self {
            run_dir,
            interrupted: Some(msg),
            report: None,
            student,
            compression: None,
        }
    }
}

/// Runs a classification job.
pub fn run(cfg: &ClassifyConfig, opts: &RunOptions) -> Result<ClsRun> {
    let wall = Instant::now();
    let mut run = prepare::prepare(cfg, opts)?;
    let labelled = data::load(&run)?;
    let folder = teacher::open(&run)?;
    let encoded = data::encode(&labelled, &folder.encoding())?;
    // Training begins: the folder now keeps whatever happens.
    run.folder.keep();
    let teacher = match teacher::obtain(&run, &folder, &labelled, &encoded, opts)? {
        TeacherStage::Ready(t) => *t,
        TeacherStage::Interrupted(msg) => {
            return Ok(ClsRun::interrupted(run.run_dir, msg, None));
        }
    };
    let mut stage_reports: Vec<StageReport> = teacher.stage.iter().cloned().collect();
    let students = StudentStage {
        run: &run,
        teacher: &folder,
        labelled: &labelled,
        data: &encoded,
        opts,
    };
    let trained = train_students(&students, &teacher, &mut stage_reports)?;
    let student_dir = run.run_dir.join("student");
    if let Some(msg) = trained {
        return Ok(ClsRun::interrupted(run.run_dir, msg, Some(student_dir)));
    }
    let mut report = report(&run, &folder, &labelled, &encoded, teacher, stage_reports)?;
    report.wall_seconds = wall.elapsed().as_secs_f64();
    let compression = match &cfg.compress {
        Some(c) => {
            let model = student_dir.display().to_string();
            let prepared = compression::for_classification(&model, cfg, c.calibration_blocks, opts);
            match prepared.and_then(|p| compression::run(&p, c, &run.run_dir.join("compressed"))) {
                Ok(done) => {
                    report.compression = Some(CompressionSection::of(&done));
                    Some(done)
                }
                Err(e) => {
                    // The training's report is kept; the compression error is the run's.
                    report.write(&run.run_dir)?;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    report.write(&run.run_dir)?;
    Ok(ClsRun {
        run_dir: run.run_dir,
        interrupted: None,
        report: Some(report),
        student: Some(student_dir),
        compression,
    })
}

/// The distilled student and, with `scratch_baseline`, the same student on labels alone;
/// `Some(message)` when interrupted.
fn train_students(
    s: &StudentStage,
    teacher: &Obtained,
    reports: &mut Vec<StageReport>,
) -> Result<Option<String>> {
    let (run, cfg) = (s.run, s.run.cfg);
    // What the student learns from: the teacher's logits of the training split, once (it is
    // frozen), or the teacher itself when hidden states are compared.
    let online = !cfg.distill.hidden.is_empty();
    let cached = if cfg.distill.alpha > 0.0 && !online {
        evaluate::logits_with_progress(
            &teacher.model,
            &s.data.train,
            s.teacher.pad,
            &run.device,
            s.opts,
            "teacher logits",
        )?
    } else {
        vec![]
    };
    let signal = if online {
        TeacherSignal::Online(&teacher.model)
    } else {
        TeacherSignal::Cached(cached.as_slice())
    };
    let student = build_student(s, teacher)?;
    let kd = cfg.distill.alpha > 0.0 || online;
    let student_dir = run.run_dir.join("student");
    let out = s.train(
        "distill",
        &student,
        kd.then_some(signal),
        &cfg.distill,
        &student_dir,
    )?;
    reports.push(StageReport::from(&out));
    if out.interrupted {
        return Ok(Some(format!(
            "interrupted; the best student so far is in {}",
            student_dir.display()
        )));
    }
    drop(student);
    if !cfg.distill.scratch_baseline {
        return Ok(None);
    }
    let spec = distill_student::StudentConfig {
        init: InitConfig::Random {
            seed: cfg.train.seed,
        },
        ..cfg.student.clone()
    };
    let num_labels = s.labelled.num_labels();
    let scratch = build_bert_student(
        &s.teacher.config,
        None,
        &spec,
        num_labels,
        cfg.pooling,
        &run.device,
    )?;
    let scratch_dir = run.run_dir.join("scratch");
    let out = s.train("scratch", &scratch, None, &labels_only(cfg), &scratch_dir)?;
    reports.push(StageReport::from(&out));
    Ok(out.interrupted.then(|| {
        format!(
            "interrupted during the labels-only baseline; it is in {}",
            scratch_dir.display()
        )
    }))
}

/// The student, its layers taken from the teacher (fine-tuned here, or as on disk).
fn build_student(s: &StudentStage, teacher: &Obtained) -> Result<BertStudent> {
    let (run, cfg) = (s.run, s.run.cfg);
    let tsrc: Box<dyn WeightSource> = match &teacher.varmap {
        Some(vm) => Box::new(VarMapWeights::new(vm, DType::F32, &run.device)),
        None => Box::new(SafetensorsWeights::open(
            &s.teacher.folder.weight_files,
            DType::F32,
            &run.device,
        )?),
    };
    let student = build_bert_student(
        &s.teacher.config,
        Some(tsrc.as_ref()),
        &cfg.student,
        s.labelled.num_labels(),
        cfg.pooling,
        &run.device,
    )
    .context("student")?;
    cfg.train
        .check_layers("train", student.config.num_hidden_layers)?;
    tracing::info!(
        layers = student.config.num_hidden_layers,
        hidden = student.config.hidden_size,
        heads = student.config.num_attention_heads,
        intermediate = student.config.intermediate_size,
        from_teacher_layers = ?student.layer_map,
        "student"
    );
    Ok(student)
}

/// The report: every exported model scored on the test split, the data and the stages.
fn report(
    run: &Prepared,
    folder: &TeacherFolder,
    l: &Labelled,
    data: &Encoded,
    teacher: Obtained,
    stages: Vec<StageReport>,
) -> Result<ClassificationReport> {
    let cfg = run.cfg;
    let teacher_test = predict_logits(&teacher.model, &data.test, 32, folder.pad, &run.device)?;
    let teacher_pred = argmaxes(&teacher_test);
    let mut models: Vec<(&str, String)> = vec![
        ("teacher", teacher.path),
        (
            "student (KD)",
            run.run_dir.join("student").display().to_string(),
        ),
    ];
    if cfg.distill.scratch_baseline {
        models.push((
            "student (labels only)",
            run.run_dir.join("scratch").display().to_string(),
        ));
    }
    let rows = evaluate::test_rows(
        &models,
        &data.test,
        &l.set.labels,
        &teacher_pred,
        &run.device,
    )?;
    let per_class = |idx: &[usize]| {
        let mut c = vec![0; l.set.labels.len()];
        for &i in idx {
            c[l.set.examples[i].label] += 1;
        }
        c
    };
    let data_report = DataReport {
        labels: l.set.labels.clone(),
        examples: l.set.examples.len(),
        per_class: l.set.class_counts(),
        train: per_class(&l.split.train),
        validation: per_class(&l.split.validation),
        test: per_class(&l.split.test),
        skipped: l.set.skipped.clone(),
        unknown_charset: l.set.unknown_charset.len(),
        truncated: [
            data.train.truncated,
            data.valid.truncated,
            data.test.truncated,
        ],
        max_length: folder.max_len,
    };
    Ok(ClassificationReport {
        run: cfg.output.name.clone(),
        summary: summary(&rows, &l.set.labels),
        data: data_report,
        models: rows,
        stages,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        wall_seconds: 0.0,
        compression: None,
    })
}

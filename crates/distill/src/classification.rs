//! A classification job: labelled data → (fine-tuned) teacher → distilled student (and
//! optionally the same student trained on labels alone) → test-split report (→ the
//! `compress:` section). Every training stage is the learner with its own checkpoints, so an
//! interrupted run resumes where it stopped: finished stages are restored from their last
//! checkpoint, the interrupted one continues, later ones start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Var};
use candle_nn::{Init, VarMap};
use distill_files::write_file;
use distill_models::{
    pad_batch, ArchConfig, BertClassifier, BertConfig, Input, Model, SafetensorsWeights,
    VarMapWeights, WeightSource,
};
use distill_student::{build_bert_student, save_bert_classifier, BertExport, InitConfig};
use distill_teacher::{load_tokenizer, resolve, Resolved, TeacherSource};
use distill_train::checkpoint::latest;
use distill_train::classify::{encode_examples, Confusion, EncodedSet};
use distill_train::config::DistillConfig;
use distill_train::data::{load_labelled, split_stratified, LabelledSet, LabelledSplit};
use distill_train::scoring::{argmaxes, predict_logits};
use distill_train::tasks::{Classification, TeacherSignal};
use distill_train::{Event, LearnOutcome, Learner, Training};

use crate::classifier::{labels_of, load_classifier, pad_id};
use crate::compression::{self, Compression};
use crate::error::{Context, Error, Result};
use crate::job::ClassifyConfig;
use crate::options::RunOptions;
use crate::report::{summary, ClassificationReport, DataReport, ModelRow, StageReport};
use crate::run_dir::{local_inputs, RunDir, RunDirOptions};

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

fn per_class(set: &LabelledSet, idx: &[usize]) -> Vec<usize> {
    let mut c = vec![0; set.labels.len()];
    for &i in idx {
        c[set.examples[i].label] += 1;
    }
    c
}

/// Mean latency per message at batch 1 and throughput at batch 32, on the test split in its
/// order (real lengths, padding as a server would see it).
fn speed(model: &dyn Model, set: &EncodedSet, pad: u32, device: &Device) -> Result<(f64, f64)> {
    let run = |rows: &[Vec<u32>]| -> Result<()> {
        let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let b = pad_batch(&refs, pad, device)?;
        let l = model
            .run(&Input::new(&b.ids).with_mask(Some(&b.mask)))?
            .logits;
        l.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    };
    let n1 = set.len().min(64);
    run(&set.ids[..1])?; // warm-up
    let t = Instant::now();
    for i in 0..n1 {
        run(&set.ids[i..i + 1])?;
    }
    let latency_ms = t.elapsed().as_secs_f64() * 1e3 / n1.max(1) as f64;
    let n32 = set.len().min(256);
    let t = Instant::now();
    for chunk in set.ids[..n32].chunks(32) {
        run(chunk)?;
    }
    Ok((latency_ms, n32 as f64 / t.elapsed().as_secs_f64().max(1e-9)))
}

/// Class logits of `set` with progress reported as `stage`.
fn logits_with_progress(
    model: &dyn Model,
    set: &EncodedSet,
    pad: u32,
    device: &Device,
    opts: &RunOptions,
    stage: &str,
) -> Result<Vec<Vec<f32>>> {
    const SLICE: usize = 256;
    opts.observer.event(&Event::Started {
        stage,
        unit: "examples",
        total: set.len() as u64,
        done: 0,
    });
    let mut out = Vec::with_capacity(set.len());
    for start in (0..set.len()).step_by(SLICE) {
        let end = (start + SLICE).min(set.len());
        let part = EncodedSet {
            ids: set.ids[start..end].to_vec(),
            labels: set.labels[start..end].to_vec(),
            truncated: 0,
        };
        out.extend(predict_logits(model, &part, 32, pad, device)?);
        opts.observer.event(&Event::Progress {
            stage,
            done: end as u64,
        });
    }
    opts.observer.event(&Event::Finished { stage });
    Ok(out)
}

/// One training stage: the learner with the stage's own checkpoints, resumed when the run
/// resumes and the stage has a checkpoint.
fn fit_stage(
    stage: &str,
    training: &Training,
    task: &mut Classification,
    run_dir: &Path,
    opts: &RunOptions,
    device: &Device,
) -> Result<LearnOutcome> {
    let checkpoints = run_dir.join("checkpoints").join(stage);
    let resume = opts.resume && latest(&checkpoints).is_some();
    Learner::new(training, stage)
        .checkpoints(checkpoints)
        .metrics(run_dir.join("metrics.jsonl"))
        .observer(opts.observer)
        .stop_flag(&opts.stop)
        .device(device)
        .fit(task, resume)
        .with_context(|| format!("stage `{stage}`"))
}

/// Runs a classification job.
pub fn run(cfg: &ClassifyConfig, opts: &RunOptions) -> Result<ClsRun> {
    let wall = Instant::now();
    let run_dir = cfg.run_dir();
    if opts.launch.is_some() {
        // Its stages (fine-tuning, distillation, the labels-only baseline) train in one process.
        return Err(Error::Invalid(
            "a classification run trains in one process: run it without a launcher (WORLD_SIZE unset or 1)".into(),
        ));
    }
    let mut run_folder = RunDir::prepare(
        cfg,
        &run_dir,
        &RunDirOptions {
            resume: opts.resume,
            overwrite: opts.overwrite,
            inputs: local_inputs([Path::new(&cfg.teacher.source), cfg.data.source.path()]),
        },
    )?;
    let load = cfg.teacher.load_options().context("teacher")?;
    let device = load.device.clone();

    // Data.
    let set = load_labelled(&cfg.data).context("data.source")?;
    let split: LabelledSplit = split_stratified(
        &set,
        cfg.data.validation_fraction,
        cfg.data.test_fraction,
        cfg.data.seed,
        cfg.data.max_per_class,
    );
    let ids_of = |idx: &[usize]| {
        idx.iter()
            .map(|&i| set.examples[i].id.clone())
            .collect::<Vec<_>>()
    };
    let split_json = serde_json::json!({
        "labels": set.labels,
        "seed": cfg.data.seed,
        "train": ids_of(&split.train),
        "validation": ids_of(&split.validation),
        "test": ids_of(&split.test),
    });
    let split_path = run_dir.join("split.json");
    write_file(
        &split_path,
        serde_json::to_string_pretty(&split_json)
            .expect("JSON")
            .as_bytes(),
    )
    .map_err(crate::error::Error::from)?;
    tracing::info!(
        examples = set.examples.len(),
        skipped = set.skipped.len(),
        train = split.train.len(),
        validation = split.validation.len(),
        test = split.test.len(),
        "labelled data"
    );
    let num_labels = set.labels.len();
    if split.test.is_empty() || split.validation.is_empty() {
        return Err(Error::Invalid(format!(
            "data: the split has {} validation and {} test examples; the run needs both (raise validation_fraction/test_fraction or max_per_class)",
            split.validation.len(),
            split.test.len()
        )));
    }

    // Teacher: a BERT folder.
    let source = TeacherSource::parse(&cfg.teacher.source).context("teacher.source")?;
    let resolved = resolve(&source, &load.hub)?;
    distill_teacher::check_finite(&source, &resolved, load.non_finite).context("teacher.source")?;
    let Resolved::Folder(folder) = &resolved else {
        return Err(Error::Invalid(format!("teacher.source: classification needs a BERT encoder in Hugging Face layout; {source} is a GGUF file")));
    };
    let ArchConfig::Bert(tcfg) = &folder.config else {
        return Err(Error::Invalid(format!(
            "teacher.source: classification needs a BERT encoder; {source} is a `{}` decoder",
            folder.config.family()
        )));
    };
    let tokenizer = load_tokenizer(&resolved)?.tokenizer;
    let pad = pad_id(&tokenizer, tcfg);
    let max_len = cfg.data.max_length.min(tcfg.max_position_embeddings);
    if max_len < cfg.data.max_length {
        tracing::warn!(
            "data.max_length {} exceeds the teacher's {} positions; using {max_len}",
            cfg.data.max_length,
            tcfg.max_position_embeddings
        );
    }
    let encode =
        |idx: &[usize]| encode_examples(&tokenizer, &set.examples, idx, max_len, tcfg.vocab_size);
    let (train, valid, test) = (
        encode(&split.train)?,
        encode(&split.validation)?,
        encode(&split.test)?,
    );
    let st = SafetensorsWeights::open(&folder.weight_files, DType::F32, &device)?;
    let labels_only = DistillConfig {
        alpha: 0.0,
        hidden: vec![],
        ..cfg.distill.clone()
    };

    // Training begins: the folder now keeps whatever happens.
    run_folder.keep();
    let mut stages = vec![];
    let teacher_dir = run_dir.join("teacher");
    let teacher_vm = VarMap::new();
    let (teacher, teacher_src_path): (BertClassifier, String) = match &cfg.finetune {
        Some(ft) => {
            ft.check_layers("finetune", tcfg.num_hidden_layers)?;
            if BertClassifier::has_head(&st) {
                let rows = labels_of(tcfg, &st, &cfg.teacher.source)?.len();
                if rows != num_labels {
                    return Err(Error::Invalid(format!("teacher.source: its head has {rows} classes, the data {num_labels}; start from an encoder without a head")));
                }
            }
            // Every tensor becomes a variable under HF classifier names; the head (and the
            // pooler, if the checkpoint lacks one) start fresh.
            {
                let tprefix = distill_models::encoder_prefix(&st);
                let mut data = teacher_vm.data().lock().unwrap_or_else(|p| p.into_inner());
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
            }
            let frozen = ft.clone();
            // The fresh head is drawn from the run's seed, so fine-tuning is reproducible.
            let src = VarMapWeights::new(&teacher_vm, DType::F32, &device)
                .with_frozen(move |n| frozen.is_frozen(n))
                .with_seed(ft.seed);
            let model = BertClassifier::load(tcfg, &src, num_labels, cfg.pooling)?;
            tracing::info!(source = %source, "fine-tuning the teacher");
            let mut task = Classification::new(
                &model,
                &teacher_vm,
                None,
                &labels_only,
                ft,
                &train,
                &valid,
                pad,
                &device,
            )?;
            let out = fit_stage("finetune", ft, &mut task, &run_dir, opts, &device)?;
            drop(task);
            stages.push(StageReport::from(&out));
            save_bert_classifier(
                &teacher_dir,
                &BertExport {
                    config: tcfg,
                    varmap: &teacher_vm,
                    labels: &set.labels,
                    pooling: cfg.pooling,
                    tokenizer: &tokenizer,
                    dtype: DType::F32,
                    max_length: max_len,
                },
            )?;
            if out.interrupted {
                return Ok(ClsRun {
                    run_dir,
                    interrupted: Some(format!(
                        "interrupted during fine-tuning; the best teacher so far is in {}",
                        teacher_dir.display()
                    )),
                    report: None,
                    student: None,
                    compression: None,
                });
            }
            (model, teacher_dir.display().to_string())
        }
        None => {
            if !BertClassifier::has_head(&st) {
                return Err(Error::Invalid(format!(
                    "teacher.source: {source} has no classification head (`classifier.weight`); add a `finetune:` section to train one on the data"
                )));
            }
            let labels = labels_of(tcfg, &st, &cfg.teacher.source)?;
            if labels != set.labels && tcfg.id2label.is_some() {
                return Err(Error::Invalid(format!(
                    "teacher.source: the head's classes {labels:?} differ from the data's {:?} (set data.labels in the head's order)",
                    set.labels
                )));
            }
            if labels.len() != num_labels {
                return Err(Error::Invalid(format!(
                    "teacher.source: the head has {} classes, the data {num_labels}",
                    labels.len()
                )));
            }
            let model = BertClassifier::load(tcfg, &st, num_labels, cfg.pooling)?;
            (model, cfg.teacher.source.clone())
        }
    };

    // What the student learns from: the teacher's logits of the training split, once (it is
    // frozen), or the teacher itself when hidden states are compared.
    let online = !cfg.distill.hidden.is_empty();
    let cached = if cfg.distill.alpha > 0.0 && !online {
        logits_with_progress(&teacher, &train, pad, &device, opts, "teacher logits")?
    } else {
        vec![]
    };
    let signal = || {
        if online {
            TeacherSignal::Online(&teacher)
        } else {
            TeacherSignal::Cached(&cached)
        }
    };

    // Student.
    let tsrc: Box<dyn WeightSource> = if cfg.finetune.is_some() {
        Box::new(VarMapWeights::new(&teacher_vm, DType::F32, &device))
    } else {
        Box::new(SafetensorsWeights::open(
            &folder.weight_files,
            DType::F32,
            &device,
        )?)
    };
    let student = build_bert_student(
        tcfg,
        Some(tsrc.as_ref()),
        &cfg.student,
        num_labels,
        cfg.pooling,
        &device,
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
    let dtype = cfg.export_dtype()?;
    let export = |dir: &Path, c: &BertConfig, vm: &VarMap| -> Result<u64> {
        Ok(save_bert_classifier(
            dir,
            &BertExport {
                config: c,
                varmap: vm,
                labels: &set.labels,
                pooling: cfg.pooling,
                tokenizer: &tokenizer,
                dtype,
                max_length: max_len,
            },
        )?)
    };
    // A student stage: the learner on the classification task, then the export.
    let train_student = |stage: &str,
                         s: &distill_student::BertStudent,
                         teacher: Option<TeacherSignal>,
                         distill: &DistillConfig,
                         dir: &Path|
     -> Result<LearnOutcome> {
        let mut task = Classification::new(
            &s.model, &s.varmap, teacher, distill, &cfg.train, &train, &valid, pad, &device,
        )?;
        let out = fit_stage(stage, &cfg.train, &mut task, &run_dir, opts, &device)?;
        export(dir, &s.config, &s.varmap)?;
        Ok(out)
    };
    let interrupted = |msg: String, student: PathBuf| ClsRun {
        run_dir: run_dir.clone(),
        interrupted: Some(msg),
        report: None,
        student: Some(student),
        compression: None,
    };
    let kd = cfg.distill.alpha > 0.0 || online;
    let student_dir = run_dir.join("student");
    let out = train_student(
        "distill",
        &student,
        kd.then(signal),
        &cfg.distill,
        &student_dir,
    )?;
    stages.push(StageReport::from(&out));
    if out.interrupted {
        return Ok(interrupted(
            format!(
                "interrupted; the best student so far is in {}",
                student_dir.display()
            ),
            student_dir,
        ));
    }
    drop(student);

    let scratch_dir = run_dir.join("scratch");
    if cfg.distill.scratch_baseline {
        let spec = distill_student::StudentConfig {
            init: InitConfig::Random {
                seed: cfg.train.seed,
            },
            ..cfg.student.clone()
        };
        let scratch = build_bert_student(tcfg, None, &spec, num_labels, cfg.pooling, &device)?;
        let out = train_student("scratch", &scratch, None, &labels_only, &scratch_dir)?;
        stages.push(StageReport::from(&out));
        if out.interrupted {
            return Ok(interrupted(
                format!(
                    "interrupted during the labels-only baseline; it is in {}",
                    scratch_dir.display()
                ),
                student_dir,
            ));
        }
    }

    // Test-split evaluation of the saved artifacts, read back from disk.
    let teacher_test = predict_logits(&teacher, &test, 32, pad, &device)?;
    let teacher_pred = argmaxes(&teacher_test);
    drop(teacher);
    let mut rows = vec![];
    let mut candidates: Vec<(&str, String)> = vec![
        ("teacher", teacher_src_path),
        ("student (KD)", student_dir.display().to_string()),
    ];
    if cfg.distill.scratch_baseline {
        candidates.push(("student (labels only)", scratch_dir.display().to_string()));
    }
    for (role, source) in candidates {
        let m = load_classifier(&source, &device)?;
        let logits = predict_logits(&m.model, &test, 32, m.pad_id, &device)?;
        let pred = argmaxes(&logits);
        let confusion = Confusion::new(&set.labels, &test.labels, &pred);
        let (latency, throughput) = speed(&m.model, &test, m.pad_id, &device)?;
        let agree = pred
            .iter()
            .zip(&teacher_pred)
            .filter(|(a, b)| a == b)
            .count() as f64
            / pred.len().max(1) as f64;
        rows.push(ModelRow {
            role: role.to_string(),
            path: source,
            parameters: m.parameters,
            bytes: m.bytes,
            accuracy: confusion.accuracy(),
            classes: (0..num_labels).map(|c| confusion.class(c)).collect(),
            confusion,
            agreement_with_teacher: agree,
            latency_ms_b1: latency,
            msgs_per_s_b32: throughput,
        });
    }

    let data = DataReport {
        labels: set.labels.clone(),
        examples: set.examples.len(),
        per_class: set.class_counts(),
        train: per_class(&set, &split.train),
        validation: per_class(&set, &split.validation),
        test: per_class(&set, &split.test),
        skipped: set.skipped.clone(),
        unknown_charset: set.unknown_charset.len(),
        truncated: [train.truncated, valid.truncated, test.truncated],
        max_length: max_len,
    };
    let summary = summary(&rows, &set.labels);
    let report = ClassificationReport {
        run: cfg.output.name.clone(),
        data,
        models: rows,
        stages,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        wall_seconds: wall.elapsed().as_secs_f64(),
        summary,
    };
    let json_path = run_dir.join("report.json");
    write_file(
        &json_path,
        serde_json::to_string_pretty(&report)
            .expect("a report serialises")
            .as_bytes(),
    )
    .map_err(crate::error::Error::from)?;
    let md_path = run_dir.join("report.md");
    write_file(&md_path, report.markdown().as_bytes()).map_err(crate::error::Error::from)?;
    let compression = match &cfg.compress {
        Some(c) => Some(compression::in_run(
            compression::for_classification(
                &student_dir.display().to_string(),
                cfg,
                c.calibration_blocks,
                opts,
            )?,
            c,
            &run_dir,
        )?),
        None => None,
    };
    Ok(ClsRun {
        run_dir,
        interrupted: None,
        report: Some(report),
        student: Some(student_dir),
        compression,
    })
}

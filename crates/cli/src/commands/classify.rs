//! `distill run` for `task: classification`: labelled data → (fine-tuned) teacher → distilled
//! student (and optionally the same student trained on labels alone) → test-split report.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Var};
use candle_nn::{Init, VarMap};
use distill_models::{
    ArchConfig, BertClassifier, BertConfig, Pooling, SafetensorsWeights, VarMapWeights,
    WeightSource,
};
use distill_student::{build_bert_student, save_bert_classifier, BertExport, InitConfig};
use distill_teacher::{load_tokenizer, resolve, HubOptions, Resolved, TeacherSource};
use distill_train::checkpoint::write_atomic;
use distill_train::classify::{
    encode_examples, pad_batch, predict_logits, ClassMetrics, ClsOutcome, ClsTrainer, Confusion,
    EncodedSet, KdTargets,
};
use distill_train::data::{load_labelled, split_stratified, LabelledSet, LabelledSplit};
use serde::Serialize;

use crate::config::{ClassifyConfig, Job};

/// A classifier folder read back from disk.
pub struct LoadedClassifier {
    pub model: BertClassifier,
    pub labels: Vec<String>,
    pub tokenizer: tokenizers::Tokenizer,
    pub config: BertConfig,
    pub bytes: u64,
    pub parameters: usize,
    pub pad_id: u32,
    /// `distill_pooling` of the config (`cls` when absent).
    pub pooling: Pooling,
    /// Token limit the model was trained with (`model_max_length` of `tokenizer_config.json`).
    pub max_length: usize,
}

/// Pad id of a BERT tokenizer: `[PAD]` when it has one, else the config's.
fn pad_id(tok: &tokenizers::Tokenizer, cfg: &BertConfig) -> u32 {
    tok.token_to_id("[PAD]").unwrap_or(cfg.pad_token_id as u32)
}

/// Loads a saved classifier (a `BertForSequenceClassification` folder or `hf://` repo).
pub fn load_classifier(source: &str, device: &Device) -> anyhow::Result<LoadedClassifier> {
    let src = TeacherSource::parse(source)?;
    let resolved = resolve(&src, &HubOptions::from_env())?;
    let Resolved::Folder(folder) = &resolved else {
        bail!("{source}: a classifier is a Hugging Face folder, not a GGUF file");
    };
    let ArchConfig::Bert(cfg) = &folder.config else {
        bail!(
            "{source}: a `{}` model is not a BERT classifier",
            folder.config.family()
        );
    };
    let st = SafetensorsWeights::open(&folder.weight_files, DType::F32, device)?;
    if !BertClassifier::has_head(&st) {
        bail!(
            "{source}: no classification head (`classifier.weight`); fine-tune one with a `finetune:` section"
        );
    }
    let labels = labels_of(cfg, &st, source)?;
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&folder.config_path)
            .with_context(|| folder.config_path.display().to_string())?,
    )?;
    let pooling = match raw.get("distill_pooling").and_then(|p| p.as_str()) {
        None | Some("cls") => Pooling::Cls,
        Some("mean") => Pooling::Mean,
        Some(other) => bail!(
            "{}: distill_pooling `{other}` is not cls or mean",
            folder.config_path.display()
        ),
    };
    let prefix = bert_prefix(&st);
    let model = BertClassifier::load(cfg, &st, labels.len(), pooling, prefix)?;
    let tokenizer = load_tokenizer(&resolved)?.tokenizer;
    let parameters = st
        .tensor_infos()
        .iter()
        .filter(|(n, _, _)| !n.ends_with("position_ids"))
        .map(|(_, _, s)| s.iter().product::<usize>())
        .sum();
    let max_length = std::fs::read_to_string(folder.dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("model_max_length").and_then(|m| m.as_u64()))
        .map(|m| (m as usize).min(cfg.max_position_embeddings))
        .unwrap_or(cfg.max_position_embeddings);
    Ok(LoadedClassifier {
        max_length,
        pooling,
        pad_id: pad_id(&tokenizer, cfg),
        model,
        labels,
        tokenizer,
        config: cfg.clone(),
        bytes: distill_models::weights::bytes_on_disk(&folder.weight_files),
        parameters,
    })
}

pub(crate) fn bert_prefix(src: &dyn WeightSource) -> &'static str {
    if src.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    }
}

/// Class names of a checkpoint with a head: from `id2label`, else `LABEL_i`.
fn labels_of(
    cfg: &BertConfig,
    st: &SafetensorsWeights,
    source: &str,
) -> anyhow::Result<Vec<String>> {
    // The head's rows: `id2label` when the config has it (a compressed head may be stored as
    // codes rather than as `classifier.weight`), else the head's shape.
    let rows = match &cfg.id2label {
        Some(m) => m.len(),
        None => st
            .tensor_infos()
            .into_iter()
            .find(|(n, _, _)| n == "classifier.weight")
            .map(|(_, _, s)| s[0])
            .unwrap_or(0),
    };
    let labels: Vec<String> = match &cfg.id2label {
        Some(m) => (0..rows)
            .map(|i| {
                m.get(&i.to_string())
                    .cloned()
                    .with_context(|| format!("{source}: id2label has no entry for class {i}"))
            })
            .collect::<anyhow::Result<_>>()?,
        None => (0..rows).map(|i| format!("LABEL_{i}")).collect(),
    };
    Ok(labels)
}

#[derive(Serialize)]
struct ModelRow {
    role: String,
    path: String,
    parameters: usize,
    bytes: u64,
    accuracy: f64,
    classes: Vec<ClassMetrics>,
    confusion: Confusion,
    /// Share of test messages where the prediction equals the teacher's.
    agreement_with_teacher: f64,
    latency_ms_b1: f64,
    msgs_per_s_b32: f64,
}

#[derive(Serialize)]
struct DataReport {
    labels: Vec<String>,
    examples: usize,
    per_class: Vec<usize>,
    train: Vec<usize>,
    validation: Vec<usize>,
    test: Vec<usize>,
    skipped: Vec<distill_train::data::Skipped>,
    unknown_charset: usize,
    truncated: [usize; 3],
    max_length: usize,
}

#[derive(Serialize)]
struct Report {
    run: String,
    data: DataReport,
    models: Vec<ModelRow>,
    stages: Vec<ClsOutcome>,
    threads: usize,
    wall_seconds: f64,
    summary: serde_json::Value,
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
fn speed(
    model: &BertClassifier,
    set: &EncodedSet,
    pad: u32,
    device: &Device,
) -> anyhow::Result<(f64, f64)> {
    let run = |rows: &[Vec<u32>]| -> anyhow::Result<()> {
        let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let (ids, mask) = pad_batch(&refs, pad, device)?;
        let l = model.forward(&ids, &mask, None, false)?.logits;
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

pub(crate) fn argmaxes(logits: &[Vec<f32>]) -> Vec<u32> {
    logits
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                })
                .0 as u32
        })
        .collect()
}

/// Runs the whole classification job.
pub fn run(cfg: &ClassifyConfig, run_dir: &Path, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let wall = Instant::now();
    let opts = cfg.teacher.load_options().context("teacher")?;
    let device = opts.device.clone();

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
    write_atomic(
        &run_dir.join("split.json"),
        serde_json::to_string_pretty(&split_json)?.as_bytes(),
    )?;
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
        bail!(
            "data: the split has {} validation and {} test examples; the run needs both (raise validation_fraction/test_fraction or max_per_class)",
            split.validation.len(),
            split.test.len()
        );
    }

    // Teacher: a BERT folder.
    let source = TeacherSource::parse(&cfg.teacher.source).context("teacher.source")?;
    let resolved = resolve(&source, &opts.hub)?;
    let Resolved::Folder(folder) = &resolved else {
        bail!("teacher.source: classification needs a BERT encoder in Hugging Face layout; {source} is a GGUF file");
    };
    let ArchConfig::Bert(tcfg) = &folder.config else {
        bail!(
            "teacher.source: classification needs a BERT encoder; {source} is a `{}` decoder",
            folder.config.family()
        );
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
    let tprefix = bert_prefix(&st);

    let mut stages = vec![];
    let teacher_dir = run_dir.join("teacher");
    let teacher_vm = VarMap::new();
    let (teacher, teacher_src_path): (BertClassifier, String) = match &cfg.finetune {
        Some(ft) => {
            ft.validate("finetune", Some(tcfg.num_hidden_layers))?;
            if BertClassifier::has_head(&st) {
                let rows = labels_of(tcfg, &st, &cfg.teacher.source)?.len();
                if rows != num_labels {
                    bail!("teacher.source: its head has {rows} classes, the data {num_labels}; start from an encoder without a head");
                }
            }
            // Every tensor becomes a variable under HF classifier names; the head (and the
            // pooler, if the checkpoint lacks one) start fresh.
            {
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
            let src = VarMapWeights::new(&teacher_vm, DType::F32, &device)
                .with_frozen(move |n| frozen.is_frozen(n));
            let model = BertClassifier::load(tcfg, &src, num_labels, cfg.pooling, "bert.")?;
            tracing::info!(source = %source, "fine-tuning the teacher");
            let out = ClsTrainer {
                cfg: ft,
                stage: "finetune",
                model: &model,
                varmap: &teacher_vm,
                train: &train,
                valid: &valid,
                teacher: None,
                pad_id: pad,
                device: device.clone(),
                metrics: Some(run_dir.join("metrics.jsonl")),
                progress: true,
                stop: Some(stop.clone()),
            }
            .run()?;
            let interrupted = out.interrupted;
            stages.push(out);
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
            if interrupted {
                println!(
                    "interrupted during fine-tuning; the best teacher so far is in {}",
                    teacher_dir.display()
                );
                return Ok(());
            }
            (model, teacher_dir.display().to_string())
        }
        None => {
            if !BertClassifier::has_head(&st) {
                bail!(
                    "teacher.source: {source} has no classification head (`classifier.weight`); add a `finetune:` section to train one on the data"
                );
            }
            let labels = labels_of(tcfg, &st, &cfg.teacher.source)?;
            if labels != set.labels && tcfg.id2label.is_some() {
                bail!(
                    "teacher.source: the head's classes {labels:?} differ from the data's {:?} (set data.labels in the head's order)",
                    set.labels
                );
            }
            if labels.len() != num_labels {
                bail!(
                    "teacher.source: the head has {} classes, the data {num_labels}",
                    labels.len()
                );
            }
            let model = BertClassifier::load(tcfg, &st, num_labels, cfg.pooling, tprefix)?;
            (model, cfg.teacher.source.clone())
        }
    };

    // Teacher logits, once: the teacher is frozen.
    let t0 = Instant::now();
    let teacher_train_logits = predict_logits(&teacher, &train, 32, pad, &device)?;
    tracing::info!(
        seconds = t0.elapsed().as_secs_f64(),
        "teacher logits of the training split cached"
    );

    // Student.
    let (tsrc, tsrc_prefix): (Box<dyn WeightSource>, &str) = if cfg.finetune.is_some() {
        (
            Box::new(VarMapWeights::new(&teacher_vm, DType::F32, &device)),
            "bert.",
        )
    } else {
        (
            Box::new(SafetensorsWeights::open(
                &folder.weight_files,
                DType::F32,
                &device,
            )?),
            tprefix,
        )
    };
    let student = build_bert_student(
        tcfg,
        Some((tsrc.as_ref(), tsrc_prefix)),
        &cfg.student,
        num_labels,
        cfg.pooling,
        &device,
    )
    .context("student")?;
    cfg.train
        .validate("train", Some(student.config.num_hidden_layers))?;
    tracing::info!(
        layers = student.config.num_hidden_layers,
        hidden = student.config.hidden_size,
        heads = student.config.num_attention_heads,
        intermediate = student.config.intermediate_size,
        from_teacher_layers = ?student.layer_map,
        "student"
    );
    let dtype = cfg.export_dtype()?;
    let train_student = |stage: &str, model: &BertClassifier, vm: &VarMap, kd: bool| {
        ClsTrainer {
            cfg: &cfg.train,
            stage,
            model,
            varmap: vm,
            train: &train,
            valid: &valid,
            teacher: kd.then(|| KdTargets {
                logits: &teacher_train_logits,
                alpha: cfg.distill.alpha,
                temperature: cfg.distill.temperature,
            }),
            pad_id: pad,
            device: device.clone(),
            metrics: Some(run_dir.join("metrics.jsonl")),
            progress: true,
            stop: Some(stop.clone()),
        }
        .run()
    };
    let export = |dir: &Path, c: &BertConfig, vm: &VarMap| -> anyhow::Result<u64> {
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
    let out = train_student("distill", &student.model, &student.varmap, true)?;
    let interrupted = out.interrupted;
    stages.push(out);
    let student_dir = run_dir.join("student");
    export(&student_dir, &student.config, &student.varmap)?;
    if interrupted {
        println!(
            "interrupted; the best student so far is in {}",
            student_dir.display()
        );
        return Ok(());
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
        let out = train_student("scratch", &scratch.model, &scratch.varmap, false)?;
        stages.push(out);
        export(&scratch_dir, &scratch.config, &scratch.varmap)?;
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
    let report = Report {
        run: cfg.output.name.clone(),
        data,
        models: rows,
        stages,
        threads: rayon_threads(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        summary,
    };
    write_atomic(
        &run_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let md = markdown(&report);
    write_atomic(&run_dir.join("report.md"), md.as_bytes())?;
    println!("\n{md}");
    println!("report: {}", run_dir.join("report.md").display());
    if let Some(c) = &cfg.compress {
        let subject =
            super::pipeline::cls::ClsSubject::new(&student_dir.display().to_string(), cfg)?;
        super::pipeline::run_in(&subject, c, run_dir)?;
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Flat keys for scripts: `teacher_acc`, `kd_acc`, `scratch_acc`, bytes, speed, F1 of the last
/// class (the positive one in a binary task).
fn summary(rows: &[ModelRow], labels: &[String]) -> serde_json::Value {
    let mut s = serde_json::Map::new();
    let positive = labels.len() - 1;
    for r in rows {
        let key = match r.role.as_str() {
            "teacher" => "teacher",
            "student (KD)" => "kd",
            _ => "scratch",
        };
        s.insert(format!("{key}_acc"), r.accuracy.into());
        s.insert(
            format!("{key}_f1_{}", labels[positive]),
            r.classes[positive].f1.into(),
        );
        s.insert(format!("{key}_params"), r.parameters.into());
        s.insert(format!("{key}_bytes"), r.bytes.into());
        s.insert(format!("{key}_latency_ms_b1"), r.latency_ms_b1.into());
        s.insert(format!("{key}_msgs_per_s_b32"), r.msgs_per_s_b32.into());
    }
    // The issue's names for the distilled model.
    for k in ["bytes", "msgs_per_s_b32", "params", "latency_ms_b1"] {
        if let Some(v) = s.get(&format!("kd_{k}")).cloned() {
            s.insert(format!("student_{k}"), v);
        }
    }
    serde_json::Value::Object(s)
}

fn markdown(r: &Report) -> String {
    let mut md = format!("# {} — classification report\n\n", r.run);
    md += "Test split, models read back from their exported folders; speed on the CPU with ";
    md += &format!("{} threads.\n\n", r.threads);
    md += "| model | params | bytes | accuracy | ";
    md += &r
        .data
        .labels
        .iter()
        .map(|l| format!("F1 {l}"))
        .collect::<Vec<_>>()
        .join(" | ");
    md += " | agrees with teacher | ms/msg (batch 1) | msgs/s (batch 32) |\n|---|---:|---:|---:|";
    md += &"---:|".repeat(r.data.labels.len());
    md += "---:|---:|---:|\n";
    for m in &r.models {
        md += &format!(
            "| {} | {:.2} M | {:.1} MB | {:.4} | {} | {:.4} | {:.2} | {:.1} |\n",
            m.role,
            m.parameters as f64 / 1e6,
            m.bytes as f64 / 1e6,
            m.accuracy,
            m.classes
                .iter()
                .map(|c| format!("{:.4}", c.f1))
                .collect::<Vec<_>>()
                .join(" | "),
            m.agreement_with_teacher,
            m.latency_ms_b1,
            m.msgs_per_s_b32
        );
    }
    for m in &r.models {
        md += &format!(
            "\nConfusion, {} (rows: true class):\n\n```\n{}```\n",
            m.role,
            m.confusion.table()
        );
    }
    md += "\n## Data\n\n";
    md += &format!(
        "{} examples ({}), split train {:?} / validation {:?} / test {:?} per class.\n",
        r.data.examples,
        r.data
            .labels
            .iter()
            .zip(&r.data.per_class)
            .map(|(l, n)| format!("{l} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.data.train,
        r.data.validation,
        r.data.test
    );
    md += &format!(
        "Truncated to {} tokens: {} train, {} validation, {} test. Unknown charsets (decoded as UTF-8 with replacements): {}. Inputs that could not be decoded: {}.\n",
        r.data.max_length, r.data.truncated[0], r.data.truncated[1], r.data.truncated[2], r.data.unknown_charset, r.data.skipped.len()
    );
    for s in &r.data.skipped {
        md += &format!("- `{}`: {}\n", s.id, s.reason);
    }
    md += "\n## Training\n\n| stage | steps | best step | best val acc | stopped early | seconds | examples/s |\n|---|---:|---:|---:|---|---:|---:|\n";
    for s in &r.stages {
        md += &format!(
            "| {} | {} | {} | {:.4} | {} | {:.0} | {:.1} |\n",
            s.stage,
            s.steps,
            s.best.as_ref().map(|b| b.step).unwrap_or(0),
            s.best.as_ref().map(|b| b.val_acc).unwrap_or(0.0),
            s.stopped_early,
            s.seconds,
            s.examples_per_second
        );
    }
    md += &format!("\nWall time of the whole run: {:.0} s.\n", r.wall_seconds);
    md
}

/// `distill eval MODEL --labelled FILE`: accuracy, per-class F1 and the confusion matrix of a
/// saved classifier.
pub fn eval_classifier(
    model_source: &str,
    labelled: &Path,
    split: &str,
    device: &Device,
    json: bool,
    predictions: bool,
) -> anyhow::Result<()> {
    use distill_train::data::{LabelledDataConfig, LabelledSource, TextFormat};
    let m = load_classifier(model_source, device)?;
    let ext = labelled.extension().and_then(|e| e.to_str()).unwrap_or("");
    let plain = |source: LabelledSource| LabelledDataConfig {
        source,
        format: TextFormat::Plain,
        email: Default::default(),
        labels: Some(m.labels.clone()),
        max_length: m.max_length,
        validation_fraction: 0.0,
        test_fraction: 0.0,
        seed: 0,
        max_per_class: None,
    };
    let (data, part) = match ext {
        "jsonl" => (
            plain(LabelledSource::Jsonl {
                path: labelled.to_path_buf(),
                text_field: "text".into(),
                label_field: "label".into(),
            }),
            "all",
        ),
        "csv" => (
            plain(LabelledSource::Csv {
                path: labelled.to_path_buf(),
                text_column: "text".into(),
                label_column: "label".into(),
                delimiter: ',',
            }),
            "all",
        ),
        "yaml" | "yml" => match crate::config::load_job(labelled)? {
            Job::Classification(c) => {
                let mut d = c.data.clone();
                d.labels = Some(m.labels.clone());
                (d, split)
            }
            Job::CausalLm(_) => bail!("{}: not a classification config", labelled.display()),
        },
        _ => bail!(
            "--labelled {}: expected a .jsonl, .csv or classification .yaml file",
            labelled.display()
        ),
    };
    let set = load_labelled(&data).with_context(|| labelled.display().to_string())?;
    let s = split_stratified(
        &set,
        data.validation_fraction,
        data.test_fraction,
        data.seed,
        data.max_per_class,
    );
    let idx: Vec<usize> = match part {
        "all" => (0..set.examples.len()).collect(),
        "train" => s.train,
        "validation" => s.validation,
        "test" => s.test,
        other => bail!("--split: expected all, train, validation or test, got `{other}`"),
    };
    let max_len = data.max_length.min(m.config.max_position_embeddings);
    let enc = encode_examples(
        &m.tokenizer,
        &set.examples,
        &idx,
        max_len,
        m.config.vocab_size,
    )?;
    let logits = predict_logits(&m.model, &enc, 32, m.pad_id, device)?;
    let confusion = Confusion::new(&m.labels, &enc.labels, &argmaxes(&logits));
    let classes: Vec<ClassMetrics> = (0..m.labels.len()).map(|c| confusion.class(c)).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": model_source,
                "examples": enc.len(),
                "truncated": enc.truncated,
                "skipped": set.skipped,
                "accuracy": confusion.accuracy(),
                "classes": classes,
                "confusion": confusion,
                "max_length": max_len,
                "predictions": predictions.then(|| idx.iter().zip(&logits).map(|(&i, l)| serde_json::json!({
                    "id": set.examples[i].id,
                    "label": set.labels[set.examples[i].label],
                    "text": set.examples[i].text,
                    "logits": l,
                })).collect::<Vec<_>>()),
            }))?
        );
    } else {
        println!(
            "{} examples ({part}), accuracy {:.4}; {} truncated to {max_len} tokens, {} skipped",
            enc.len(),
            confusion.accuracy(),
            enc.truncated,
            set.skipped.len()
        );
        for c in &classes {
            println!(
                "  {:<12} precision {:.4} recall {:.4} F1 {:.4} (support {})",
                c.label, c.precision, c.recall, c.f1, c.support
            );
        }
        print!("\nconfusion (rows: true class)\n{}", confusion.table());
    }
    Ok(())
}

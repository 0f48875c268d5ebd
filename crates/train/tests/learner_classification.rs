//! The learner on the classification task with tiny BERT classifiers: it learns a separable
//! task and keeps the best weights reproducibly, distillation pulls the student to the
//! teacher, frozen variables stay, resume is bit-exact (dropout, keep-best and early-stopping
//! state included), and every soft loss and hidden-state losses train a classifier.

mod support;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use distill_models::{BertClassifier, BertConfig, Pooling, VarMapWeights};
use distill_train::config::DistillConfig;
use distill_train::data::EncodedSet;
use distill_train::scoring::{argmax, predict_logits};
use distill_train::tasks::{
    ClassTeacher, Classification, ClassificationSetup, Student, TeacherSignal,
};
use distill_train::{LearnOutcome, Learner, TaskKind, TrainConfig, Training};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::weights;

fn tiny_cfg() -> BertConfig {
    BertConfig::from_json(
        r#"{"model_type":"bert","vocab_size":30,"hidden_size":16,"num_hidden_layers":2,
            "num_attention_heads":2,"intermediate_size":32,"max_position_embeddings":16}"#,
        "tiny",
    )
    .unwrap()
}

/// Class 1 iff token 7 occurs: learnable by a tiny model in a few epochs.
fn task(n: usize, seed: u64) -> EncodedSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut set = EncodedSet::default();
    for i in 0..n {
        let len = rng.random_range(3..9);
        let mut ids: Vec<u32> = (0..len).map(|_| rng.random_range(3..7)).collect();
        let label = (i % 2) as u32;
        if label == 1 {
            let at = rng.random_range(0..len);
            ids[at] = 7;
        }
        ids.insert(0, 1);
        ids.push(2);
        set.ids.push(ids);
        set.labels.push(label);
    }
    set
}

/// A tiny classifier with seeded weights (candle's own init is not seeded).
fn seeded_model(vm: &VarMap, seed: u64, frozen: Option<Training>) -> BertClassifier {
    let dev = Device::Cpu;
    let mut src = VarMapWeights::new(vm, DType::F32, &dev);
    if let Some(f) = frozen {
        src = src.with_frozen(move |n| f.is_frozen(n));
    }
    let m = BertClassifier::load(&tiny_cfg(), &src, 2, Pooling::Mean).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let t = var.as_tensor();
        let v: Vec<f32> = if name.contains("LayerNorm.weight") {
            vec![1.0; t.elem_count()]
        } else if name.ends_with("bias") {
            vec![0.0; t.elem_count()]
        } else {
            (0..t.elem_count())
                .map(|_| rng.random_range(-0.05f32..0.05))
                .collect()
        };
        var.set(&Tensor::from_vec(v, t.dims(), &dev).unwrap())
            .unwrap();
    }
    m
}

fn config(json: &str) -> TrainConfig {
    serde_json::from_str(json).unwrap()
}

fn train_cfg() -> TrainConfig {
    config(r#"{"epochs": 20, "batch_size": 8, "lr": 0.005, "patience": 0}"#)
}

fn resolved(c: &TrainConfig) -> Training {
    c.resolve(TaskKind::Classification, "train").unwrap()
}

fn labels_only() -> DistillConfig {
    serde_json::from_str(r#"{"alpha": 0.0}"#).unwrap()
}

fn fit(
    m: &BertClassifier,
    vm: &VarMap,
    teacher: Option<ClassTeacher>,
    distill: &DistillConfig,
    training: &Training,
    data: (&EncodedSet, &EncodedSet),
) -> LearnOutcome {
    let mut t = Classification::new(ClassificationSetup {
        student: Student {
            model: m,
            varmap: vm,
        },
        teacher,
        distill,
        training,
        train: data.0,
        valid: data.1,
        pad_id: 0,
        device: Device::Cpu,
    })
    .unwrap();
    Learner::new(training, "test").fit(&mut t, false).unwrap()
}

#[test]
fn learns_a_separable_task_keeps_the_best_weights_and_is_reproducible() {
    let dev = Device::Cpu;
    let (train, valid) = (task(64, 1), task(32, 2));
    let run = || {
        let vm = VarMap::new();
        let m = seeded_model(&vm, 11, None);
        let training = resolved(&train_cfg());
        let out = fit(&m, &vm, None, &labels_only(), &training, (&train, &valid));
        let logits = predict_logits(&m, &valid, 7, 0, &dev).unwrap();
        let acc = logits
            .iter()
            .zip(&valid.labels)
            .filter(|(r, &l)| argmax(r) == l as usize)
            .count() as f64
            / valid.len() as f64;
        (out, acc, logits)
    };
    let (out, acc, logits) = run();
    let best = out.best.clone().unwrap();
    let best_acc = best.get("val_acc").unwrap();
    assert_eq!(out.evals.len(), 20);
    assert!(best_acc >= 0.9, "validation accuracy {best_acc}");
    // The weights in place are the best evaluation's.
    assert!((acc - best_acc).abs() < 1e-12, "{acc} vs {best_acc}");
    assert!(out
        .evals
        .iter()
        .all(|e| e.get("val_acc").unwrap() <= best_acc));
    let (_, acc2, logits2) = run();
    assert_eq!(acc, acc2);
    assert_eq!(logits, logits2, "same seed, same result");
}

#[test]
fn distillation_pulls_the_student_towards_the_teacher_logits() {
    let dev = Device::Cpu;
    let (train, mut valid) = (task(48, 3), task(16, 4));
    // A teacher that is confidently wrong on every example: with alpha = 1 the student
    // learns to disagree with the labels. (Validation is labelled the teacher's way, since
    // the best weights are chosen on it.)
    for l in valid.labels.iter_mut() {
        *l = 1 - *l;
    }
    let wrong: Vec<Vec<f32>> = train
        .labels
        .iter()
        .map(|&l| {
            if l == 1 {
                vec![4.0, -4.0]
            } else {
                vec![-4.0, 4.0]
            }
        })
        .collect();
    let vm = VarMap::new();
    let m = seeded_model(&vm, 12, None);
    let training = resolved(&train_cfg());
    let distill: DistillConfig =
        serde_json::from_str(r#"{"alpha": 1.0, "temperature": 2.0}"#).unwrap();
    fit(
        &m,
        &vm,
        Some(TeacherSignal::Cached(&wrong)),
        &distill,
        &training,
        (&train, &valid),
    );
    let logits = predict_logits(&m, &train, 16, 0, &dev).unwrap();
    let agree_with_teacher = logits
        .iter()
        .zip(&train.labels)
        .filter(|(r, &l)| argmax(r) != l as usize)
        .count();
    assert!(
        agree_with_teacher * 10 >= train.len() * 7,
        "{agree_with_teacher}/{}",
        train.len()
    );
}

#[test]
fn frozen_variables_do_not_move() {
    let (train, valid) = (task(16, 5), task(8, 6));
    let vm = VarMap::new();
    let cfg = resolved(&config(
        r#"{"epochs": 1, "batch_size": 8, "lr": 0.005, "patience": 0,
            "freeze_embeddings": true, "freeze_layers": [0]}"#,
    ));
    let m = seeded_model(&vm, 13, Some(cfg.clone()));
    let before: HashMap<String, Vec<f32>> = weights(&vm).into_iter().collect();
    let out = fit(&m, &vm, None, &labels_only(), &cfg, (&train, &valid));
    assert!(out.trainable_parameters > 0);
    for (k, now) in weights(&vm) {
        let moved = now != before[&k];
        assert_eq!(moved, !cfg.is_frozen(&k), "{k}");
    }
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    let (train, valid) = (task(40, 7), task(12, 8));
    let teacher: Vec<Vec<f32>> = train
        .labels
        .iter()
        .map(|&l| {
            if l == 1 {
                vec![-1.0, 2.0]
            } else {
                vec![1.5, -0.5]
            }
        })
        .collect();
    let distill: DistillConfig =
        serde_json::from_str(r#"{"alpha": 0.6, "temperature": 2.0}"#).unwrap();
    // Dropout, accumulation, evaluations with keep-best and a patience that is tracked.
    let training = resolved(&config(
        r#"{"steps": 8, "batch_size": 6, "grad_accum": 2, "lr": 0.01, "dropout": 0.2,
            "eval_every": 2, "patience": 10, "seed": 9}"#,
    ));
    let tmp = tempfile::tempdir().unwrap();
    let run = |dir: &str, resume: bool, stop_at: Option<usize>| {
        let vm = VarMap::new();
        let m = seeded_model(&vm, 21, None);
        let mut t = Classification::new(ClassificationSetup {
            student: Student {
                model: &m,
                varmap: &vm,
            },
            teacher: Some(TeacherSignal::Cached(&teacher)),
            distill: &distill,
            training: &training,
            train: &train,
            valid: &valid,
            pad_id: 0,
            device: Device::Cpu,
        })
        .unwrap();
        let out = Learner::new(&training, "distill")
            .checkpoints(tmp.path().join(dir).join("checkpoints"))
            .metrics(tmp.path().join(dir).join("metrics.jsonl"))
            .stop_at(stop_at)
            .fit(&mut t, resume)
            .unwrap();
        (out, weights(&vm))
    };
    let (straight, a) = run("a", false, None);
    assert_eq!(straight.steps, 8);
    let (first, _) = run("b", false, Some(3));
    assert!(first.interrupted && first.steps == 3);
    let (second, c) = run("b", true, None);
    assert_eq!(second.resumed_from, Some(3));
    assert_eq!(a, c, "resumed weights differ from the uninterrupted run");
    assert_eq!(
        straight.best.map(|b| b.step),
        second.best.map(|b| b.step),
        "the same evaluation was kept"
    );
    let steps: Vec<u64> = std::fs::read_to_string(tmp.path().join("b/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<u64>>());
}

#[test]
fn every_soft_loss_and_hidden_losses_train_a_classifier() {
    let (train, valid) = (task(32, 9), task(8, 10));
    let tvm = VarMap::new();
    let teacher = seeded_model(&tvm, 30, None);
    // A teacher that knows the task.
    let t_training = resolved(&train_cfg());
    fit(
        &teacher,
        &tvm,
        None,
        &labels_only(),
        &t_training,
        (&train, &valid),
    );
    for loss in ["forward_kl", "reverse_kl", "jsd"] {
        let vm = VarMap::new();
        let m = seeded_model(&vm, 31, None);
        let distill: DistillConfig = serde_json::from_str(&format!(
            r#"{{"loss": "{loss}", "alpha": 0.8, "temperature": 2.0,
                "hidden": [{{"student_layer": 2, "teacher_layer": 2, "loss": "cosine"}}]}}"#
        ))
        .unwrap();
        let training = resolved(&config(
            r#"{"epochs": 6, "batch_size": 8, "lr": 0.005, "patience": 0}"#,
        ));
        let out = fit(
            &m,
            &vm,
            Some(TeacherSignal::Online(&teacher)),
            &distill,
            &training,
            (&train, &valid),
        );
        let first = &out.steps_log[0];
        let last = out.steps_log.last().unwrap();
        assert!(
            first.part("soft").is_some() && first.part("hidden").is_some(),
            "{loss}: {first:?}"
        );
        let (h0, h1) = (first.part("hidden").unwrap(), last.part("hidden").unwrap());
        assert!(
            h1 < h0,
            "{loss}: the hidden-state loss did not fall: {h0} → {h1}"
        );
    }
}

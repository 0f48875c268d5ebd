//! The learner on the causal-LM task with tiny random models: resume is bit-exact,
//! distillation moves the student towards the teacher, and bad states are reported.

mod support;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use distill_models::Llama;
use distill_train::config::DistillConfig;
use distill_train::data::BlockSet;
use distill_train::tasks::{CausalLm, CausalLmSetup, Student, TeacherSignal};
use distill_train::{LearnOutcome, Learner, TaskKind, TrainConfig, TrainError, Training};
use support::{blocks, cfg, model, weights};

fn train_cfg(steps: usize) -> TrainConfig {
    from_json(&format!(
        r#"{{"steps": {steps}, "batch_size": 2, "grad_accum": 2, "lr": 0.003, "warmup_steps": 2,
            "eval_every": 3, "eval_blocks": 4, "checkpoint_every": 2, "seed": 5}}"#
    ))
}

fn resolved(tc: &TrainConfig) -> Training {
    tc.resolve(TaskKind::CausalLm, "train").unwrap()
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> T {
    serde_json::from_str(json).unwrap()
}

fn distill(alpha: f64) -> DistillConfig {
    from_json(&format!(r#"{{"alpha": {alpha}, "temperature": 2.0}}"#))
}

/// The soft loss (KL) of a run's first and last steps.
fn first_and_last_kl(out: &LearnOutcome) -> (f32, f32) {
    let kl = |r: Option<&distill_train::StepRecord>| r.unwrap().part("soft").unwrap();
    (kl(out.steps_log.first()), kl(out.steps_log.last()))
}

struct Setup {
    teacher: Llama,
    train: BlockSet,
    valid: BlockSet,
}

fn setup() -> Setup {
    let (_, teacher) = model(&cfg(2, 32));
    Setup {
        teacher,
        train: blocks(10, 16, 1),
        valid: blocks(4, 16, 2),
    }
}

/// Trains `student` on `train` (with the setup's teacher and validation blocks) in `dir`.
#[allow(clippy::too_many_arguments)] // each test varies a different one
fn fit(
    s: &Setup,
    dir: &Path,
    student: (&VarMap, &Llama),
    tc: &TrainConfig,
    dc: &DistillConfig,
    train: &BlockSet,
    resume: bool,
    stop_at: Option<usize>,
) -> Result<(LearnOutcome, Option<f64>), TrainError> {
    let training = resolved(tc);
    let mut task = CausalLm::new(CausalLmSetup {
        student: Student {
            model: student.1,
            varmap: student.0,
        },
        teacher: Some(TeacherSignal::Online(&s.teacher)),
        distill: dc,
        training: &training,
        train,
        valid: &s.valid,
        device: Device::Cpu,
        cross: None,
    })?;
    let out = Learner::new(&training, "train")
        .checkpoints(dir.join("checkpoints"))
        .metrics(dir.join("metrics.jsonl"))
        .stop_at(stop_at)
        .fit(&mut task, resume)?;
    Ok((out, task.teacher_val_ppl()))
}

fn run(
    s: &Setup,
    dir: &Path,
    student: (&VarMap, &Llama),
    tc: &TrainConfig,
    dc: &DistillConfig,
    resume: bool,
    stop_at: Option<usize>,
) -> LearnOutcome {
    fit(s, dir, student, tc, dc, &s.train, resume, stop_at)
        .unwrap()
        .0
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let student_cfg = cfg(1, 16);
    let (vm0, _) = model(&student_cfg);
    let init = tmp.path().join("init.safetensors");
    vm0.save(&init).unwrap();
    let fresh = || {
        let (mut vm, m) = model(&student_cfg);
        vm.load(&init).unwrap();
        (vm, m)
    };
    let tc = train_cfg(6);
    let dc = distill(0.7);

    let (vm_a, m_a) = fresh();
    let a = run(
        &s,
        &tmp.path().join("a"),
        (&vm_a, &m_a),
        &tc,
        &dc,
        false,
        None,
    );
    assert_eq!(a.steps, 6);
    assert!(!a.interrupted);

    let (vm_b, m_b) = fresh();
    let first = run(
        &s,
        &tmp.path().join("b"),
        (&vm_b, &m_b),
        &tc,
        &dc,
        false,
        Some(3),
    );
    assert!(first.interrupted);
    assert_eq!(first.steps, 3);
    let (vm_c, m_c) = fresh(); // a new process: weights come only from the checkpoint
    let second = run(
        &s,
        &tmp.path().join("b"),
        (&vm_c, &m_c),
        &tc,
        &dc,
        true,
        None,
    );
    assert_eq!(second.resumed_from, Some(3));
    assert_eq!(second.steps, 6);
    assert_eq!(
        weights(&vm_a),
        weights(&vm_c),
        "resumed weights differ from the uninterrupted run"
    );

    // The metrics of the resumed run continue where the first stopped, without duplicates.
    let lines = std::fs::read_to_string(tmp.path().join("b/metrics.jsonl")).unwrap();
    let train_steps: Vec<u64> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(train_steps, vec![1, 2, 3, 4, 5, 6]);
    // Only the newest checkpoints are kept.
    let kept = std::fs::read_dir(tmp.path().join("b/checkpoints"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(kept, 2);
}

#[test]
fn distillation_moves_the_student_towards_the_teacher() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let (vm, m) = model(&cfg(1, 16));
    let mut tc = train_cfg(30);
    tc.eval_every = Some(30);
    let (out, teacher_val_ppl) = fit(
        &s,
        tmp.path(),
        (&vm, &m),
        &tc,
        &distill(1.0),
        &s.train,
        false,
        None,
    )
    .unwrap();
    let (first, last) = first_and_last_kl(&out);
    assert!(last < 0.7 * first, "KL did not fall: {first} → {last}");
    assert!(out.evals.last().unwrap().get("val_kl").unwrap() > 0.0);
    assert!(teacher_val_ppl.unwrap() > 1.0);
}

#[test]
fn a_diverging_run_stops_with_a_checkpoint_naming_the_step() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let (vm, m) = model(&cfg(1, 16));
    let mut tc = train_cfg(20);
    tc.lr = Some(1e30);
    tc.max_grad_norm = Some(0.0);
    tc.warmup_steps = Some(0);
    let dc = distill(0.5);
    let e = fit(&s, tmp.path(), (&vm, &m), &tc, &dc, &s.train, false, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("at step") && e.contains("checkpoints/step-"),
        "{e}"
    );
}

#[test]
fn resume_without_a_checkpoint_is_an_error() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let (vm, m) = model(&cfg(1, 16));
    let tc = train_cfg(2);
    let dc = distill(0.5);
    let r = fit(&s, tmp.path(), (&vm, &m), &tc, &dc, &s.train, true, None);
    assert!(r.unwrap_err().to_string().contains("no checkpoint"));
}

#[test]
fn a_teacher_with_another_vocabulary_is_refused() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let mut other = cfg(1, 16);
    other.vocab_size = 50;
    let (vm, m) = model(&other);
    let tc = train_cfg(2);
    // Token ids the student can embed; the teacher's logits are still over 64 tokens.
    let mut train = blocks(10, 16, 1);
    for b in &mut train.blocks {
        b.iter_mut().for_each(|t| *t %= 50);
    }
    let dc = distill(0.5);
    let e = fit(&s, tmp.path(), (&vm, &m), &tc, &dc, &train, false, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vocabulary") && e.contains("64") && e.contains("50"),
        "{e}"
    );
}

/// A student multiplying in bf16 over f32 master weights trains as the f32 one does from the
/// same initial weights, to within bf16's precision: the same falling KL step by step, its
/// weights still f32 and moved by the updates.
#[test]
fn bf16_matmuls_over_f32_master_weights_train_like_f32() {
    let s = setup();
    let mut tc = train_cfg(30);
    tc.eval_every = Some(30);
    let (vm, mut m) = model(&cfg(1, 16));
    let initial: Vec<(String, candle_core::Tensor)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    let before = weights(&vm);
    let mut runs = vec![];
    for dtype in [None, Some(DType::BF16)] {
        for (name, value) in &initial {
            vm.data().lock().unwrap()[name].set(value).unwrap();
        }
        assert_eq!(weights(&vm), before);
        let tmp = tempfile::tempdir().unwrap();
        m.set_matmul_dtype(dtype);
        let (out, _) = fit(
            &s,
            tmp.path(),
            (&vm, &m),
            &tc,
            &distill(1.0),
            &s.train,
            false,
            None,
        )
        .unwrap();
        for (name, v) in vm.data().lock().unwrap().iter() {
            assert_eq!(v.dtype(), DType::F32, "{name} is no longer f32");
        }
        assert_ne!(weights(&vm), before, "the weights did not move");
        let (first, last) = first_and_last_kl(&out);
        assert!(
            last < 0.7 * first,
            "{dtype:?}: KL did not fall: {first} → {last}"
        );
        runs.push(
            out.steps_log
                .iter()
                .map(|r| r.part("soft").unwrap())
                .collect::<Vec<_>>(),
        );
    }
    // Step by step, the KL of the bf16 run stays near the f32 run's: the products round to
    // 8 bits of mantissa, the updates accumulate in f32.
    let (a, b) = (&runs[0], &runs[1]);
    let (sa, sb): (f32, f32) = (a.iter().sum(), b.iter().sum());
    assert!(
        (sa - sb).abs() < 0.05 * sa,
        "summed KL over the run: f32 {sa}, bf16 products {sb}"
    );
    assert!(
        (a[0] - b[0]).abs() < 0.02 * a[0],
        "first step: f32 {}, bf16 {}",
        a[0],
        b[0]
    );
}

//! Data-parallel training on the CPU with ranks that are threads ([`InProcess`]): a group
//! trains as one process does on the combined batch, and stops together.

mod support;

use std::path::Path;

use candle_core::Device;
use distill_models::{Llama, LlamaConfig};
use distill_train::config::DistillConfig;
use distill_train::data::BlockSet;
use distill_train::parallel::{Communicator, InProcess};
use distill_train::tasks::{CausalLm, CausalLmSetup, Student, TeacherSignal};
use distill_train::{LearnOutcome, Learner, StopFlag, TaskKind, TrainConfig, Training};
use support::{blocks, cfg, model, weights, Weights};

fn training(batch_size: usize) -> Training {
    let tc: TrainConfig = serde_json::from_str(&format!(
        r#"{{"steps": 5, "batch_size": {batch_size}, "grad_accum": 2, "lr": 0.003, "warmup_steps": 1,
            "eval_every": 5, "eval_blocks": 4, "checkpoint_every": 5, "seed": 3}}"#
    ))
    .unwrap();
    tc.resolve(TaskKind::CausalLm, "train").unwrap()
}

struct Setup {
    teacher: Llama,
    train: BlockSet,
    valid: BlockSet,
    student: LlamaConfig,
    init: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

fn setup() -> Setup {
    let (_, teacher) = model(&cfg(2, 32));
    let tmp = tempfile::tempdir().unwrap();
    let student = cfg(1, 16);
    let (vm, _) = model(&student);
    let init = tmp.path().join("init.safetensors");
    vm.save(&init).unwrap();
    Setup {
        teacher,
        train: blocks(12, 16, 1),
        valid: blocks(4, 16, 2),
        student,
        init,
        _tmp: tmp,
    }
}

/// Trains a student (from the shared initial weights, or from its own draw with `own_init`)
/// as rank `comm` in `dir`; returns the outcome and the final weights.
fn train_rank(
    s: &Setup,
    t: &Training,
    comm: Option<&dyn Communicator>,
    dir: &Path,
    own_init: bool,
    stop: Option<&StopFlag>,
) -> (LearnOutcome, Weights) {
    let (mut vm, m) = model(&s.student);
    if !own_init {
        vm.load(&s.init).unwrap();
    }
    let dc = DistillConfig::default();
    let mut task = CausalLm::new(CausalLmSetup {
        student: Student {
            model: &m,
            varmap: &vm,
        },
        teacher: Some(TeacherSignal::Online(&s.teacher)),
        distill: &dc,
        training: t,
        train: &s.train,
        valid: &s.valid,
        device: Device::Cpu,
        cross: None,
    })
    .unwrap();
    let mut learner = Learner::new(t, "train")
        .checkpoints(dir.join("checkpoints"))
        .metrics(dir.join("metrics.jsonl"));
    if let Some(c) = comm {
        learner = learner.data_parallel(c);
    }
    if let Some(f) = stop {
        learner = learner.stop_flag(f);
    }
    let out = learner.fit(&mut task, false).unwrap();
    (out, weights(&vm))
}

fn group(
    s: &Setup,
    t: &Training,
    world: usize,
    dir: &Path,
    stop_rank: Option<usize>,
) -> Vec<(LearnOutcome, Weights)> {
    let flags: Vec<StopFlag> = (0..world).map(|_| StopFlag::default()).collect();
    if let Some(r) = stop_rank {
        flags[r].request();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = InProcess::group(world)
            .into_iter()
            .zip(&flags)
            .map(|(c, flag)| {
                let d = dir.join(format!("rank-{}", c.rank()));
                scope.spawn(move || {
                    // Rank 1 draws its own weights: the group must start from rank 0's.
                    let own = c.rank() == 1;
                    train_rank(s, t, Some(&c), &d, own, Some(flag))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn max_difference(a: &Weights, b: &Weights) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            va.iter().zip(vb).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn ranks_train_as_one_process_on_the_combined_batch() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let t = training(4);
    let (alone, alone_w) = train_rank(&s, &t, None, &tmp.path().join("alone"), false, None);
    // Two ranks of two rows each, and three of two, one and one: the gradients are weighed by
    // each rank's tokens, so uneven shares average as the combined batch does.
    for world in [2, 3] {
        let out = group(&s, &t, world, &tmp.path().join(format!("w{world}")), None);
        for (rank, (o, w)) in out.iter().enumerate() {
            assert_eq!(o.steps, 5);
            let d = max_difference(&alone_w, w);
            assert!(
                d < 2e-5,
                "{world} ranks, rank {rank}: weights differ by {d}"
            );
            for (a, b) in alone.steps_log.iter().zip(&o.steps_log) {
                assert!(
                    (a.loss - b.loss).abs() < 1e-4 * a.loss.abs().max(1.0),
                    "{world} ranks, step {}: loss {} alone, {} in the group",
                    a.step,
                    a.loss,
                    b.loss
                );
                assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0));
            }
            assert_eq!(o.units, alone.units, "every rank counts the group's tokens");
        }
        // Every rank ends with the same weights, bit for bit.
        assert_eq!(max_difference(&out[0].1, &out[1].1), 0.0);
        // Rank 0 alone writes the run's files.
        let root = tmp.path().join(format!("w{world}"));
        assert!(root.join("rank-0/metrics.jsonl").is_file());
        assert!(root.join("rank-0/checkpoints/latest").exists());
        assert!(!root.join("rank-1/metrics.jsonl").exists());
        assert!(!root.join("rank-1/checkpoints").exists());
    }
}

#[test]
fn a_stop_on_one_rank_stops_the_group_at_the_same_step() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let out = group(&s, &training(4), 2, tmp.path(), Some(1));
    for (o, _) in &out {
        assert!(o.interrupted);
        assert_eq!(o.steps, 1, "the flag travels with the first step's sum");
    }
    assert!(tmp.path().join("rank-0/checkpoints/latest").exists());
}

#[test]
fn a_batch_smaller_than_the_group_is_refused() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let t = training(2);
    let errs: Vec<String> = std::thread::scope(|scope| {
        let hs: Vec<_> = InProcess::group(3)
            .into_iter()
            .map(|c| {
                let (s, t, dir) = (&s, &t, tmp.path());
                scope.spawn(move || {
                    let (mut vm, m) = model(&s.student);
                    vm.load(&s.init).unwrap();
                    let dc = DistillConfig::default();
                    let mut task = CausalLm::new(CausalLmSetup {
                        student: Student {
                            model: &m,
                            varmap: &vm,
                        },
                        teacher: Some(TeacherSignal::Online(&s.teacher)),
                        distill: &dc,
                        training: t,
                        train: &s.train,
                        valid: &s.valid,
                        device: Device::Cpu,
                        cross: None,
                    })
                    .unwrap();
                    Learner::new(t, "train")
                        .checkpoints(dir.join("c"))
                        .data_parallel(&c)
                        .fit(&mut task, false)
                        .err()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in errs {
        assert!(
            e.contains("batch_size 2 is the combined micro-batch of all 3 ranks"),
            "{e}"
        );
    }
}

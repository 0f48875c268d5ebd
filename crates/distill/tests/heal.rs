//! Healing after sparsity pruning trains the sparse model it measures: after every optimiser
//! step of the learner, the pruned weights are exactly zero.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder};
use distill::compression::{for_causal_lm, run};
use distill::{parse_job, Job, RunOptions};
use distill_compress::passes::pruning::sparsity::zero_masks;
use distill_compress::{Candidate, CompressConfig, CompressError, Length, StepHook, Trainer};

/// Wraps the task's trainer: after the heal pass's own hook, checks that every weight that was
/// zero when healing started is still exactly zero, and counts the steps it saw.
struct Checking<'a> {
    inner: Box<dyn Trainer + 'a>,
    steps: Rc<Cell<usize>>,
    masked: Rc<Cell<usize>>,
}

impl Trainer for Checking<'_> {
    fn train(
        &self,
        c: &mut Candidate,
        length: Length,
        lr: Option<f64>,
        after_step: StepHook,
    ) -> Result<(), CompressError> {
        let masks = zero_masks(&c.weights.tensors)?;
        self.masked.set(masks.len());
        let mut check = |vars: &std::collections::BTreeMap<String, candle_core::Var>| {
            after_step(vars)?;
            for (name, mask) in &masks {
                let v = vars[name].as_tensor();
                let pruned = (v * (1.0 - mask)?)?;
                let regrown = pruned.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(
                    regrown,
                    0.0,
                    "step {}: `{name}` regrew pruned weights",
                    self.steps.get() + 1
                );
            }
            self.steps.set(self.steps.get() + 1);
            Ok(())
        };
        self.inner.train(c, length, lr, &mut check)
    }
}

struct NoTrainer;

impl Trainer for NoTrainer {
    fn train(
        &self,
        _: &mut Candidate,
        _: Length,
        _: Option<f64>,
        _: StepHook,
    ) -> Result<(), CompressError> {
        unreachable!("replaced")
    }
}

#[test]
fn healing_keeps_pruned_weights_at_exactly_zero_after_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let student = tmp.path().join("student");
    write_tiny_llama_folder(&student, &cfg, &tiny_llama(&cfg));
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..6 {
        std::fs::write(
            docs.join(format!("doc_{i}.txt")),
            format!("Document {i}. Call me Ishmael. Some years ago, never mind how long. ")
                .repeat(4),
        )
        .unwrap();
    }
    let job = parse_job(&format!(
        "teacher: {{source: {s}}}
data:
  source: {{kind: folder, path: {d}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
distill: {{alpha: 0.5, temperature: 1.0}}
train: {{steps: 2, batch_size: 2, lr: 0.001}}
output: {{dir: {r}, name: tiny}}
",
        s = student.display(),
        d = docs.display(),
        r = tmp.path().join("runs").display(),
    ))
    .unwrap();
    let Job::CausalLm(run_cfg) = &job else {
        unreachable!()
    };
    let opts = RunOptions::default();
    let mut p = for_causal_lm(&student.display().to_string(), run_cfg, 4, 8, &opts).unwrap();
    let inner = std::mem::replace(&mut p.trainer, Box::new(NoTrainer));
    let (steps, masked) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    p.trainer = Box::new(Checking {
        inner,
        steps: steps.clone(),
        masked: masked.clone(),
    });
    let section: CompressConfig = serde_yaml::from_str(
        "variants:\n  - name: sparse-healed\n    steps: [{step: prune, sparsity: 0.5}, {step: heal, steps: 5, lr: 0.01}]\n",
    )
    .unwrap();
    let c = run(&p, &section, &tmp.path().join("out")).unwrap();
    assert_eq!(steps.get(), 5, "every optimiser step was checked");
    assert!(masked.get() > 0, "the pruned model had sparse tensors");
    let rows = &c.outcome.rows;
    let (pruned, healed) = (&rows[1], &rows[2]);
    assert_eq!(healed.steps[1], "heal 5 steps");
    assert_eq!(healed.nonzero_params, pruned.nonzero_params);
    assert_ne!(
        healed.val_ppl(),
        pruned.val_ppl(),
        "healing trained the model"
    );
}

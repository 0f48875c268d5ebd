//! Blocks with marked targets (chat data: the assistant's tokens) count only the predictions of
//! those tokens — in the fused-head loss the task takes by default, as in the objective applied
//! by hand to the selected rows — and validation perplexity is over them alone.

mod support;

use candle_core::{Device, Tensor, D};
use distill_models::{Input, Model};
use distill_train::config::DistillConfig;
use distill_train::data::BlockSet;
use distill_train::objective::{Objective, Targets};
use distill_train::parallel::Shard;
use distill_train::tasks::{CausalLm, CausalLmSetup, Student, TeacherSignal};
use distill_train::{BatchAt, Task, TaskKind, TrainConfig};
use support::{blocks, cfg, model};

const S: usize = 16;

/// Targets: block `i` marks tokens `3 + i .. 9 + i` (an "assistant turn" inside each block).
fn marked(mut set: BlockSet) -> BlockSet {
    set.targets = Some(
        (0..set.len())
            .map(|i| {
                (0..S)
                    .map(|p| (3 + i % 4..9 + i % 4).contains(&p))
                    .collect()
            })
            .collect(),
    );
    set
}

#[test]
fn only_marked_tokens_count_in_the_loss_and_the_perplexity() {
    let (_, teacher) = model(&cfg(2, 32));
    let (svm, student) = model(&cfg(1, 32));
    let train = marked(blocks(6, S, 1));
    let valid = marked(blocks(3, S, 2));
    let tc: TrainConfig = serde_json::from_str(
        r#"{"steps": 2, "batch_size": 2, "lr": 0.001, "eval_blocks": 3, "seed": 5}"#,
    )
    .unwrap();
    let training = tc.resolve(TaskKind::CausalLm, "train").unwrap();
    let dc: DistillConfig = serde_json::from_str(r#"{"alpha": 0.5, "temperature": 2.0}"#).unwrap();
    let mut task = CausalLm::new(CausalLmSetup {
        student: Student {
            model: &student,
            varmap: &svm,
        },
        teacher: Some(TeacherSignal::Online(&teacher)),
        distill: &dc,
        training: &training,
        train: &train,
        valid: &valid,
        device: Device::Cpu,
        cross: None,
    })
    .unwrap();
    let at = BatchAt {
        step: 0,
        micro: 0,
        index: 0,
        batch_size: 2,
        seed: training.seed,
        shard: Shard::WHOLE,
    };
    let got = task.loss(&at).unwrap().total.to_scalar::<f32>().unwrap();

    // By hand: the blocks the first micro-batch reads, both models' logits, the rows whose
    // next token is marked, the objective on those rows alone.
    let order = train.epoch_order(training.seed, 0);
    let picked = &order[..2];
    let ids: Vec<u32> = picked
        .iter()
        .flat_map(|&i| train.blocks[i].clone())
        .collect();
    let ids = Tensor::from_vec(ids, (2, S), &Device::Cpu).unwrap();
    let rows: Vec<u32> = picked
        .iter()
        .enumerate()
        .flat_map(|(i, &b)| {
            let t = &train.targets.as_ref().unwrap()[b];
            (0..S - 1)
                .filter(|&p| t[p + 1])
                .map(move |p| (i * (S - 1) + p) as u32)
        })
        .collect();
    assert_eq!(rows.len(), 12, "6 marked tokens per block");
    let rows = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
    let flat = |m: &dyn Model| {
        let l = m.run(&Input::new(&ids)).unwrap().logits;
        let v = l.dim(2).unwrap();
        l.narrow(1, 0, S - 1)
            .unwrap()
            .reshape((2 * (S - 1), v))
            .unwrap()
            .index_select(&rows, 0)
            .unwrap()
    };
    let labels = ids
        .narrow(1, 1, S - 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .index_select(&rows, 0)
        .unwrap();
    let objective = Objective::new(&dc, 32, 32, &Device::Cpu).unwrap();
    let want = objective
        .value(&Targets {
            student: &flat(&student),
            teacher: Some(&flat(&teacher)),
            labels: &labels,
            hidden: None,
        })
        .unwrap()
        .total
        .to_scalar::<f32>()
        .unwrap();
    assert!((got - want).abs() < 1e-5, "task {got} vs by hand {want}");

    // Validation perplexity: over the marked tokens of every validation block.
    let eval = task.evaluate().unwrap();
    let metric = |k: &str| eval.metrics.iter().find(|(n, _)| *n == k).unwrap().1;
    assert_eq!(
        metric("tokens"),
        18.0,
        "6 marked tokens in each of 3 blocks"
    );
    let ids: Vec<u32> = valid.blocks.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(ids, (3, S), &Device::Cpu).unwrap();
    let logp =
        candle_nn::ops::log_softmax(&student.run(&Input::new(&ids)).unwrap().logits, D::Minus1)
            .unwrap();
    let logp: Vec<Vec<Vec<f32>>> = logp.to_vec3().unwrap();
    let mut nll = 0f64;
    for (b, block) in valid.blocks.iter().enumerate() {
        for p in 0..S - 1 {
            if valid.targets.as_ref().unwrap()[b][p + 1] {
                nll -= logp[b][p][block[p + 1] as usize] as f64;
            }
        }
    }
    let want_ppl = (nll / 18.0).exp();
    assert!(
        (metric("val_ppl") - want_ppl).abs() < 1e-3 * want_ppl,
        "{} vs {want_ppl}",
        metric("val_ppl")
    );
}

//! Gradient accumulation: a step's micro-batches become one set of gradients (each micro-batch's
//! loss divided by their number), with the loss, its parts and the units trained on; in a
//! data-parallel group, summed over the ranks together with the stop and non-finite flags.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{Tensor, Var};

use crate::error::{Ctx, TrainError};
use crate::parallel::{all_reduce_step, Communicator, Shard, StepStats};
use crate::progress::StopFlag;
use crate::task::{BatchAt, Task};
use crate::training::Training;

/// One optimiser step's gradients and statistics.
pub(crate) struct StepGradients {
    pub(crate) grads: HashMap<String, Tensor>,
    /// Mean over the micro-batches (and the group).
    pub(crate) loss: f32,
    pub(crate) parts: BTreeMap<String, f32>,
    pub(crate) units: usize,
    pub(crate) forward_seconds: f64,
    pub(crate) backward_seconds: f64,
    /// The non-finite loss this process met, if any.
    pub(crate) non_finite: Option<f32>,
    /// Some process of the group met one: the step is not taken.
    pub(crate) any_non_finite: bool,
    /// Some rank was asked to stop: the group stops before the next step.
    pub(crate) group_stop: bool,
}

/// Turns steps into gradients for one stage.
pub(crate) struct Accumulation<'a> {
    pub(crate) training: &'a Training,
    pub(crate) shard: Shard,
    pub(crate) comm: &'a dyn Communicator,
    /// The loss parts' names, fixed at the first step (a group sums them in this order).
    part_names: Option<Vec<String>>,
}

impl<'a> Accumulation<'a> {
    pub(crate) fn new(training: &'a Training, shard: Shard, comm: &'a dyn Communicator) -> Self {
        Self {
            training,
            shard,
            comm,
            part_names: None,
        }
    }

    /// The gradients of step `step` of `task` for `trainable`.
    pub(crate) fn step(
        &mut self,
        task: &mut dyn Task,
        trainable: &BTreeMap<String, Var>,
        step: usize,
        stop: Option<&StopFlag>,
    ) -> Result<StepGradients, TrainError> {
        let mut g = self.local(task, trainable, step)?;
        if self.shard.world > 1 {
            let names = self
                .part_names
                .get_or_insert_with(|| g.parts.keys().cloned().collect());
            let local = StepStats {
                units: g.units,
                loss: g.loss,
                parts: std::mem::take(&mut g.parts),
                non_finite: g.any_non_finite,
                stop: stop.is_some_and(|s| s.is_set()),
            };
            let (combined, all) = all_reduce_step(self.comm, trainable, &g.grads, &local, names)?;
            g.grads = combined;
            (g.units, g.loss, g.parts, g.group_stop) = (all.units, all.loss, all.parts, all.stop);
            g.any_non_finite = all.non_finite;
        }
        Ok(g)
    }

    /// This process's micro-batches of `step`. A non-finite loss ends the step at once; it is
    /// reported after the group's sum, so the other ranks learn of it and all stop together.
    fn local(
        &self,
        task: &mut dyn Task,
        trainable: &BTreeMap<String, Var>,
        step: usize,
    ) -> Result<StepGradients, TrainError> {
        let cfg = self.training;
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        let mut loss_sum = 0f32;
        let mut parts: BTreeMap<String, f32> = BTreeMap::new();
        let mut units = 0usize;
        let (mut forward_total, mut backward_total) = (0f64, 0f64);
        let mut non_finite = None;
        for micro in 0..cfg.grad_accum {
            let at = BatchAt {
                step,
                micro,
                index: step * cfg.grad_accum + micro,
                batch_size: cfg.batch_size,
                seed: cfg.seed,
                shard: self.shard,
            };
            let tf = Instant::now();
            let losses = task.loss(&at)?;
            let forward_s = tf.elapsed().as_secs_f64();
            let value = losses
                .total
                .to_scalar::<f32>()
                .ctx(|| "loss value".into())?;
            if !value.is_finite() {
                non_finite = Some(value);
                break;
            }
            let scaled =
                (&losses.total / cfg.grad_accum as f64).ctx(|| "scaling the loss".into())?;
            let tb = Instant::now();
            let g = scaled
                .backward()
                .ctx(|| format!("backward pass at step {step}"))?;
            let backward_s = tb.elapsed().as_secs_f64();
            tracing::debug!(step, micro, forward_s, backward_s, "micro-batch");
            forward_total += forward_s;
            backward_total += backward_s;
            add_gradients(&mut grads, trainable, &g)?;
            loss_sum += value;
            for (k, v) in losses.parts {
                *parts.entry(k.to_string()).or_insert(0.0) += v;
            }
            units += losses.units;
        }
        let a = cfg.grad_accum as f32;
        Ok(StepGradients {
            grads,
            loss: loss_sum / a,
            parts: parts.into_iter().map(|(k, v)| (k, v / a)).collect(),
            units,
            forward_seconds: forward_total,
            backward_seconds: backward_total,
            any_non_finite: non_finite.is_some(),
            non_finite,
            group_stop: false,
        })
    }
}

/// Adds a micro-batch's gradients of `trainable` into `grads`.
fn add_gradients(
    grads: &mut HashMap<String, Tensor>,
    trainable: &BTreeMap<String, Var>,
    g: &candle_core::backprop::GradStore,
) -> Result<(), TrainError> {
    for (name, var) in trainable {
        if let Some(gr) = g.get(var.as_tensor()) {
            match grads.entry(name.clone()) {
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let sum = (o.get() + gr).ctx(|| "accumulating gradients".into())?;
                    o.insert(sum);
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(gr.clone());
                }
            }
        }
    }
    Ok(())
}

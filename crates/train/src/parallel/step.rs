//! One collective per optimiser step: what a data-parallel [`crate::Learner`] sums across its
//! ranks, and how it unpacks the sum.
//!
//! Each rank's gradient is the mean over its own tokens (or examples); the combined batch's
//! is the mean over all of them, `Σ_r u_r·g_r / Σ_r u_r`. So each rank sends `u_r·g_r`, and
//! next to the gradients the step's statistics: `u_r`, `u_r·loss_r`, `u_r·part_r`, whether
//! the rank has a gradient for each variable, whether its loss stopped being finite, and
//! whether it was asked to stop. Every rank then applies the same update, takes the same
//! decisions, and stops at the same step.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var};

use super::Communicator;
use crate::error::{Ctx, TrainError};

/// A step's statistics: one rank's before the sum, the group's after it.
pub(crate) struct StepStats {
    /// Tokens or examples in the micro-batches.
    pub units: usize,
    /// Mean loss over them.
    pub loss: f32,
    pub parts: BTreeMap<String, f32>,
    /// A loss was not finite (after the sum: on some rank).
    pub non_finite: bool,
    /// A stop was asked for (after the sum: on some rank).
    pub stop: bool,
}

/// Sums `grads` (this rank's mean gradients, by variable name) and `local` over the ranks;
/// returns the combined batch's mean gradients and statistics. `part_names` are the loss
/// parts every rank reports (a rank with no rows reports none).
pub(crate) fn all_reduce_step(
    comm: &dyn Communicator,
    trainable: &BTreeMap<String, Var>,
    grads: &HashMap<String, Tensor>,
    local: &StepStats,
    part_names: &[String],
) -> Result<(HashMap<String, Tensor>, StepStats), TrainError> {
    let Some(device) = trainable.values().next().map(|v| v.device().clone()) else {
        return Err(TrainError::Invalid(
            "data-parallel step: nothing to train".into(),
        ));
    };
    let u = local.units as f64;
    let mut present = Vec::with_capacity(trainable.len());
    let mut stats = vec![
        local.units as f32,
        (u * local.loss as f64) as f32,
        f32::from(u8::from(local.non_finite)),
        f32::from(u8::from(local.stop)),
    ];
    stats.extend(
        part_names
            .iter()
            .map(|n| (u * local.parts.get(n).copied().unwrap_or(0.0) as f64) as f32),
    );
    let pack = |present: &mut Vec<f32>, mut stats: Vec<f32>| -> candle_core::Result<Tensor> {
        let mut pieces = Vec::with_capacity(trainable.len() + 1);
        for (name, var) in trainable {
            pieces.push(match grads.get(name) {
                Some(g) => {
                    present.push(1.0);
                    (g.to_dtype(DType::F32)?.flatten_all()? * u)?
                }
                None => {
                    present.push(0.0);
                    Tensor::zeros(var.elem_count(), DType::F32, &device)?
                }
            });
        }
        stats.extend(present.iter());
        let n = stats.len();
        pieces.push(Tensor::from_vec(stats, n, &device)?);
        Tensor::cat(&pieces, 0)
    };
    let t0 = std::time::Instant::now();
    let flat = pack(&mut present, stats).ctx(|| "packing the gradients".into())?;
    let n_stats = 4 + part_names.len() + present.len();
    let t1 = std::time::Instant::now();
    let sum = comm.all_reduce_sum(&flat)?;
    let t2 = std::time::Instant::now();
    let total = flat.elem_count();
    let stats: Vec<f32> = sum
        .narrow(0, total - n_stats, n_stats)
        .and_then(|t| t.to_vec1())
        .ctx(|| "the step's statistics".into())?;
    let units = stats[0].round() as usize;
    let per = 1.0 / (units.max(1) as f64);
    let mut out = HashMap::with_capacity(trainable.len());
    let mut offset = 0;
    let present = &stats[4 + part_names.len()..];
    for ((name, var), &seen) in trainable.iter().zip(present) {
        let n = var.elem_count();
        if seen > 0.0 {
            let g = sum
                .narrow(0, offset, n)
                .and_then(|g| g.reshape(var.shape()))
                .and_then(|g| g * per)
                .and_then(|g| g.to_dtype(var.dtype()))
                .ctx(|| format!("unpacking the gradient of {name}"))?;
            out.insert(name.clone(), g);
        }
        offset += n;
    }
    tracing::debug!(
        pack_s = (t1 - t0).as_secs_f64(),
        sum_s = (t2 - t1).as_secs_f64(),
        unpack_s = t2.elapsed().as_secs_f64(),
        values = flat.elem_count(),
        "data-parallel step sum"
    );
    let parts = part_names
        .iter()
        .zip(&stats[4..4 + part_names.len()])
        .map(|(n, v)| (n.clone(), (*v as f64 * per) as f32))
        .collect();
    Ok((
        out,
        StepStats {
            units,
            loss: (stats[1] as f64 * per) as f32,
            parts,
            non_finite: stats[2] > 0.0,
            stop: stats[3] > 0.0,
        },
    ))
}

/// Gives every rank rank 0's values of `vars`, so all start from the same weights whatever
/// each drew or read.
pub(crate) fn broadcast_from_rank0(
    comm: &dyn Communicator,
    vars: &BTreeMap<String, Var>,
) -> Result<(), TrainError> {
    let Some(device) = vars.values().next().map(|v| v.device().clone()) else {
        return Ok(());
    };
    let keep = if comm.rank() == 0 { 1.0 } else { 0.0 };
    let flat = vars
        .values()
        .map(|v| v.as_tensor().to_dtype(DType::F32)?.flatten_all()? * keep)
        .collect::<candle_core::Result<Vec<_>>>()
        .and_then(|pieces| Tensor::cat(&pieces, 0))
        .and_then(|t| t.to_device(&device))
        .ctx(|| "packing the weights".into())?;
    let sum = comm.all_reduce_sum(&flat)?;
    let mut offset = 0;
    for (name, var) in vars {
        let n = var.elem_count();
        sum.narrow(0, offset, n)
            .and_then(|t| t.reshape(var.shape()))
            .and_then(|t| t.to_dtype(var.dtype()))
            .and_then(|t| var.set(&t))
            .ctx(|| format!("setting {name} to rank 0's value"))?;
        offset += n;
    }
    Ok(())
}

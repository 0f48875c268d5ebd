//! Data-parallel training: one process (or thread) per device, each training the same weights
//! on its own share of every batch, the gradients summed across them after every step.
//!
//! A [`Communicator`] sums a flat `f32` tensor over the ranks. The [`crate::Learner`] packs a
//! step's gradients (each scaled by the rank's share of the step's tokens or examples) and the
//! step's statistics into one such tensor, so one collective per step makes every rank apply
//! the same update that one process training on the combined batch would. Implementations:
//! [`Single`] (one rank, nothing to do), [`InProcess`] (threads of one process: what the tests
//! use to check the averaging), [`Tcp`] (processes on CPUs, star-shaped through rank 0; also
//! the rendezvous every multi-process backend starts from), and `Nccl` (CUDA devices, behind
//! the `nccl` feature). [`Launch`] reads a rank's place from the environment a launcher sets.

mod in_process;
mod launch;
#[cfg(feature = "nccl")]
mod nccl;
mod step;
mod tcp;

use candle_core::{DType, Device, Tensor};

use crate::error::TrainError;

pub use in_process::InProcess;
pub use launch::Launch;
#[cfg(feature = "nccl")]
pub use nccl::Nccl;
pub(crate) use step::{all_reduce_step, broadcast_from_rank0, StepStats};
pub use tcp::Tcp;

/// Sums tensors over the ranks of a data-parallel group.
pub trait Communicator: Send + Sync {
    /// This process's place, `0..world()`; rank 0 writes the run's files.
    fn rank(&self) -> usize;
    /// How many ranks train together.
    fn world(&self) -> usize;
    /// The element-wise sum over all ranks of a 1-D `f32` tensor of the same length on every
    /// rank; every rank receives the same values, bit for bit (the CPU backends sum in rank
    /// order).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), TrainError> {
        let one = Tensor::ones(1, DType::F32, &Device::Cpu).map_err(|e| error(self.rank(), e))?;
        self.all_reduce_sum(&one).map(|_| ())
    }
}

/// An error of rank `rank`.
pub(crate) fn error(rank: usize, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Parallel {
        rank,
        msg: msg.to_string(),
    }
}

/// Where a rank's rows sit in the combined batch: rank `rank` of `world` takes the `rank`-th
/// of `world` equal parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// One process training alone.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// The rows of a combined batch of `len` rows that this rank takes: contiguous, the first
    /// `len mod world` ranks one row more (a rank may get none when `len < world`).
    pub fn rows(&self, len: usize) -> std::ops::Range<usize> {
        let (base, extra) = (len / self.world, len % self.world);
        let start = self.rank * base + self.rank.min(extra);
        start..start + base + usize::from(self.rank < extra)
    }
}

/// One rank alone: sums are the input.
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        Ok(t.clone())
    }
    fn barrier(&self) -> Result<(), TrainError> {
        Ok(())
    }
}

/// `parts` summed element-wise in the order given (the rank order), into the first one's
/// length; an error names the rank whose length differs.
pub(crate) fn sum_in_order<'v>(
    mut parts: impl Iterator<Item = (usize, &'v [f32])>,
) -> Result<Vec<f32>, String> {
    let Some((_, first)) = parts.next() else {
        return Ok(vec![]);
    };
    let mut acc = first.to_vec();
    for (rank, p) in parts {
        add_into(&mut acc, rank, p)?;
    }
    Ok(acc)
}

/// `acc += theirs`, element-wise, the values of rank `rank`: the step of the in-order sum (so
/// a backend that receives one rank at a time sums as [`sum_in_order`] does).
pub(crate) fn add_into(acc: &mut [f32], rank: usize, theirs: &[f32]) -> Result<(), String> {
    if theirs.len() != acc.len() {
        return Err(format!(
            "rank {rank} sent {} values, rank 0 {}: the ranks disagree on the model or the step",
            theirs.len(),
            acc.len()
        ));
    }
    for (a, b) in acc.iter_mut().zip(theirs) {
        *a += b;
    }
    Ok(())
}

/// The values of a 1-D `f32` tensor on the host.
pub(crate) fn host_values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once() {
        for len in [0, 1, 5, 8, 13] {
            for world in 1..=4 {
                let mut covered = vec![];
                for rank in 0..world {
                    covered.extend(Shard { rank, world }.rows(len));
                }
                assert_eq!(
                    covered,
                    (0..len).collect::<Vec<_>>(),
                    "{len} rows, {world} ranks"
                );
            }
        }
        assert_eq!(Shard { rank: 1, world: 2 }.rows(8), 4..8);
    }

    #[test]
    fn a_length_mismatch_names_the_rank() {
        let (a, b) = (vec![1.0f32, 2.0], vec![1.0f32]);
        let e = sum_in_order([(0, &a[..]), (1, &b[..])].into_iter()).unwrap_err();
        assert!(e.contains("rank 1 sent 1 values"), "{e}");
    }
}

//! `batch_size: auto`: the largest micro-batch whose training step fits in a device's memory,
//! found by trying one — doubling from one row until the device runs out of memory, then
//! halving the gap (the search PyTorch Lightning's batch-size finder does), with the
//! optimiser's moments held in memory while it tries.

use candle_core::{DType, Device, Tensor};

use crate::error::{Ctx, TrainError};
use crate::parallel::Shard;
use crate::task::{BatchAt, Task};

/// What the search found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probed {
    /// The largest batch that ran.
    pub rows: usize,
    /// Whether a larger one ran out of memory (`false`: `rows` is the cap).
    pub limited_by_memory: bool,
    /// Steps tried.
    pub tries: usize,
}

/// Whether `e` is a device running out of memory (CUDA's, cuBLAS's and Metal's allocation
/// failures), which the search takes for "too large"; any other error ends it.
pub fn is_out_of_memory(e: &TrainError) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    [
        "out_of_memory",
        "out of memory",
        "alloc_failed",
        "failed to allocate",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// The largest micro-batch, at most `max` rows, for which one forward and backward pass of
/// `task` runs on `device` while `reserve_f32` more values (the optimiser's two moments per
/// trainable weight) are held there. Memory is returned between tries.
pub fn largest_batch(
    task: &mut dyn Task,
    device: &Device,
    max: usize,
    reserve_f32: usize,
    seed: u64,
) -> Result<Probed, TrainError> {
    let max = max.max(1);
    let reserve = Tensor::zeros(reserve_f32.max(1), DType::F32, device)
        .ctx(|| "batch_size auto: holding room for the optimiser".into())?;
    let mut tries = 0;
    let mut fits = |rows: usize| -> Result<bool, TrainError> {
        tries += 1;
        let at = BatchAt {
            step: 0,
            micro: 0,
            index: 0,
            batch_size: rows,
            seed,
            shard: Shard::WHOLE,
        };
        let result = task.loss(&at).and_then(|l| {
            l.total
                .backward()
                .map(drop)
                .ctx(|| format!("batch_size auto: backward pass of {rows} rows"))
        });
        device
            .synchronize()
            .ctx(|| "batch_size auto: synchronising the device".into())?;
        match result {
            Ok(()) => {
                tracing::debug!(rows, "batch_size auto: fits");
                Ok(true)
            }
            Err(e) if is_out_of_memory(&e) => {
                tracing::debug!(rows, "batch_size auto: out of memory");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    };
    if !fits(1)? {
        return Err(TrainError::Invalid(
            "batch_size auto: one row does not fit in the device's memory (a smaller student, a shorter data.block_size or teacher.dtype bf16 may)".into(),
        ));
    }
    // Double while it fits, then bisect between the last fit and the first failure.
    let (mut good, mut bad) = (1, None);
    while good < max {
        let next = (good * 2).min(max);
        if fits(next)? {
            good = next;
        } else {
            bad = Some(next);
            break;
        }
    }
    if let Some(mut hi) = bad {
        while hi - good > (good / 8).max(1) {
            let mid = good + (hi - good) / 2;
            if fits(mid)? {
                good = mid;
            } else {
                hi = mid;
            }
        }
    }
    drop(reserve);
    Ok(Probed {
        rows: good,
        limited_by_memory: bad.is_some(),
        tries,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use candle_core::Var;

    use super::*;
    use crate::task::{Evaluation, Losses};

    /// A task whose step runs out of memory above `limit` rows, or fails otherwise at `broken`.
    struct Sized {
        limit: usize,
        broken: Option<usize>,
        w: Var,
        tried: Vec<usize>,
    }

    impl Task for Sized {
        fn variables(&self) -> BTreeMap<String, Var> {
            BTreeMap::from([("w".to_string(), self.w.clone())])
        }
        fn batches_per_epoch(&self, _: usize) -> usize {
            1
        }
        fn unit(&self) -> &'static str {
            "tokens"
        }
        fn loss(&mut self, at: &BatchAt) -> Result<Losses, TrainError> {
            self.tried.push(at.batch_size);
            if Some(at.batch_size) == self.broken {
                return Err(TrainError::Invalid("a shape error".into()));
            }
            if at.batch_size > self.limit {
                return Err(TrainError::Tensor {
                    context: "student forward".into(),
                    source: candle_core::Error::Msg(
                        "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
                    ),
                });
            }
            let total = (self.w.as_tensor() * at.batch_size as f64)
                .and_then(|t| t.sum_all())
                .ctx(|| "loss".into())?;
            Ok(Losses {
                total,
                parts: vec![],
                units: at.batch_size,
            })
        }
        fn evaluate(&mut self) -> Result<Evaluation, TrainError> {
            unreachable!("the search only steps")
        }
    }

    fn task(limit: usize, broken: Option<usize>) -> Sized {
        Sized {
            limit,
            broken,
            w: Var::ones(3, DType::F32, &Device::Cpu).unwrap(),
            tried: vec![],
        }
    }

    #[test]
    fn finds_the_largest_batch_that_fits() {
        let mut t = task(100, None);
        let p = largest_batch(&mut t, &Device::Cpu, 1024, 10, 0).unwrap();
        // 1..64 fit, 128 does not; bisection narrows to within 64/8.
        assert!(p.limited_by_memory);
        assert!(p.rows <= 100 && p.rows >= 100 - 8, "{p:?}");
        assert_eq!(&t.tried[..8], &[1, 2, 4, 8, 16, 32, 64, 128]);
        assert_eq!(p.tries, t.tried.len());
    }

    #[test]
    fn stops_at_the_cap_and_reports_other_errors() {
        let mut t = task(10_000, None);
        let p = largest_batch(&mut t, &Device::Cpu, 48, 0, 0).unwrap();
        assert_eq!((p.rows, p.limited_by_memory), (48, false));
        assert_eq!(t.tried, vec![1, 2, 4, 8, 16, 32, 48]);

        let e = largest_batch(&mut task(10_000, Some(4)), &Device::Cpu, 64, 0, 0).unwrap_err();
        assert!(e.to_string().contains("a shape error"), "{e}");
        let e = largest_batch(&mut task(0, None), &Device::Cpu, 64, 0, 0).unwrap_err();
        assert!(e.to_string().contains("one row does not fit"), "{e}");
    }
}

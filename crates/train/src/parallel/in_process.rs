//! Ranks that are threads of one process, meeting at a barrier: what the tests use to check
//! that data-parallel steps equal one step on the combined batch, without a second process.

use std::sync::{Arc, Barrier, Mutex};

use candle_core::Tensor;

use super::{error, host_values, sum_in_order, Communicator};
use crate::error::TrainError;

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f32>>>,
}

/// One rank of a group of threads.
pub struct InProcess {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl InProcess {
    /// A group of `world` ranks; hand one to each thread.
    pub fn group(world: usize) -> Vec<InProcess> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(world.max(1)),
            slots: Mutex::new(vec![vec![]; world.max(1)]),
        });
        (0..world.max(1))
            .map(|rank| InProcess {
                rank,
                world: world.max(1),
                shared: shared.clone(),
            })
            .collect()
    }
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        let mine = host_values(t).map_err(|e| error(self.rank, e))?;
        self.shared.slots.lock().expect("slots")[self.rank] = mine;
        // Everyone has written; each rank sums all slots in rank order (the same sum on each).
        self.shared.barrier.wait();
        let sum = {
            let slots = self.shared.slots.lock().expect("slots");
            sum_in_order(slots.iter().enumerate().map(|(r, s)| (r, &s[..])))
        };
        // Everyone has read before anyone writes the next call's values.
        self.shared.barrier.wait();
        let sum = sum.map_err(|e| error(self.rank, e))?;
        Tensor::from_vec(sum, t.elem_count(), t.device()).map_err(|e| error(self.rank, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_thread_gets_the_sum() {
        let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = InProcess::group(3)
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let t = Tensor::new(&[r, 10.0 * r, 1.0], &Device::Cpu).unwrap();
                        let a = c.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap();
                        // A second call must not see the first one's values.
                        let b = c.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap();
                        assert_eq!(a, b);
                        a
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for s in sums {
            assert_eq!(s, vec![3.0, 30.0, 3.0]);
        }
    }
}

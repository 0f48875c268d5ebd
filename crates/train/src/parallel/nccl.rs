//! CUDA ranks joined by NCCL (candle's `nccl` feature, through cudarc): gradients are summed
//! on the devices, without a trip through the host. The group meets first over [`Tcp`]:
//! rank 0 makes the NCCL id and hands it to the others there.

use std::sync::Mutex;
use std::time::Duration;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{error, Communicator, Launch, Tcp};
use crate::error::TrainError;

/// An NCCL communicator. NCCL allows one caller at a time per communicator; the mutex makes
/// that so, which is what makes sharing it between threads sound.
struct Guarded(Comm);
// SAFETY: the communicator is only used under `Nccl::comm`'s lock, one call at a time, on the
// stream it was made with.
unsafe impl Send for Guarded {}

/// One rank of an NCCL group, on one CUDA device.
pub struct Nccl {
    rank: usize,
    world: usize,
    device: Device,
    comm: Mutex<Guarded>,
    /// The rendezvous, kept open for the group's life (a rank that dies closes it).
    _tcp: Tcp,
}

impl Nccl {
    /// Joins the group `launch` describes on `device` (this rank's CUDA device).
    pub fn connect(
        launch: &Launch,
        device: &Device,
        timeout: Duration,
    ) -> Result<Nccl, TrainError> {
        let rank = launch.rank;
        let Device::Cuda(cuda) = device else {
            return Err(error(
                rank,
                format!("NCCL needs a CUDA device; this rank runs on {device:?}"),
            ));
        };
        let tcp = Tcp::connect(launch, timeout)?;
        let mine = if rank == 0 {
            let id = Id::new().map_err(|e| error(rank, format!("making the NCCL id: {e:?}")))?;
            Some(id.internal().iter().map(|&c| c as u8).collect::<Vec<u8>>())
        } else {
            None
        };
        let bytes = tcp.broadcast(mine.as_deref())?;
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                error(
                    rank,
                    format!("an NCCL id has 128 bytes, got {}", bytes.len()),
                )
            })?;
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, launch.world, Id::uninit(internal))
            .map_err(|e| error(rank, format!("joining the NCCL group: {e:?}")))?;
        tracing::info!(rank, world = launch.world, "NCCL group ready");
        Ok(Nccl {
            rank,
            world: launch.world,
            device: device.clone(),
            comm: Mutex::new(Guarded(comm)),
            _tcp: tcp,
        })
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor, TrainError> {
        let err = |e: candle_core::Error| error(self.rank, e);
        let on_device = t
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(&self.device))
            .and_then(|t| t.contiguous())
            .map_err(err)?;
        let guard = self.comm.lock().expect("NCCL communicator");
        let sum = on_device
            .apply_op1_no_bwd(&AllReduce(&guard.0))
            .map_err(err)?;
        drop(guard);
        sum.to_device(t.device()).map_err(err)
    }
}

/// The sum over the group of a contiguous `f32` tensor, as a candle op on CUDA storage.
struct AllReduce<'c>(&'c Comm);

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("an NCCL sum runs on CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = l.shape().elem_count();
        let dev = s.device().clone();
        let src = s.as_cuda_slice::<f32>()?;
        let src = match l.contiguous_offsets() {
            Some((0, end)) if end == src.len() => src,
            _ => candle_core::bail!("an NCCL sum needs a whole contiguous buffer"),
        };
        let mut dst = dev.alloc_zeros::<f32>(n)?;
        self.0
            .all_reduce(src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

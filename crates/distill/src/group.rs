//! A run as one rank of a data-parallel group that a launcher started (`distill launch`,
//! `torchrun --no-python`, a Slurm script: [`Launch`] reads the variables they set). Each rank
//! takes the device of its `LOCAL_RANK` and joins the group over the backend its device needs:
//! TCP between CPU processes, NCCL between CUDA devices.

use std::time::Duration;

use candle_core::Device;
use distill_teacher::{DeviceSpec, LoadOptions, TeacherConfig};
use distill_train::parallel::{Communicator, Launch, Tcp};

use crate::error::{Context, Error, Result};

/// How long a rank waits for the others to join (a teacher download or a slow disk on one
/// host delays its rank).
const JOIN_TIMEOUT: Duration = Duration::from_secs(600);

/// The device spec of one rank for the run's `spec` (`teacher.device`): `auto` and `cuda` take
/// the GPU of the rank's `LOCAL_RANK` (CPU when this build or host has none, for `auto`);
/// `cpu` stays. A fixed `cuda:N` would put every rank of a host on one GPU, and Metal has no
/// collective backend here: both are errors that say what to write.
pub fn rank_device(spec: DeviceSpec, launch: &Launch) -> Result<DeviceSpec> {
    let gpu = DeviceSpec::Cuda(Some(launch.local_rank));
    match spec {
        DeviceSpec::Cpu => Ok(spec),
        DeviceSpec::Cuda(None) => Ok(gpu),
        DeviceSpec::Auto => {
            if candle_core::utils::cuda_is_available() && Device::new_cuda(launch.local_rank).is_ok()
            {
                Ok(gpu)
            } else {
                if candle_core::utils::metal_is_available() {
                    tracing::warn!("device auto: data-parallel training has no Metal backend; rank {} runs on the CPU", launch.rank);
                }
                Ok(DeviceSpec::Cpu)
            }
        }
        DeviceSpec::Metal => Err(Error::Invalid(
            "teacher.device `metal`: data-parallel training has no Metal backend; run one process, or set teacher.device: cpu".into(),
        )),
        fixed @ DeviceSpec::Cuda(Some(_)) => Err(Error::Invalid(format!(
            "teacher.device `{fixed}`: under a launcher each rank takes the GPU of its LOCAL_RANK; write `cuda` or `auto` (or `cpu`)"
        ))),
    }
}

/// This process's load options for the `teacher:` section and, under a launcher, its place in
/// the group: the device of its rank ([`rank_device`]) and the group joined from it ([`join`]).
/// What a causal-LM run and `cache-teacher` both start with.
pub fn load_and_join(
    teacher: &TeacherConfig,
    launch: Option<&Launch>,
) -> Result<(LoadOptions, Option<Box<dyn Communicator>>)> {
    let Some(launch) = launch else {
        return Ok((teacher.load_options().context("teacher")?, None));
    };
    let section = TeacherConfig {
        device: rank_device(teacher.device, launch)?,
        ..teacher.clone()
    };
    let load = section.load_options().context("teacher")?;
    let comm = join(launch, &load.device)?;
    Ok((load, Some(comm)))
}

/// Joins the group `launch` describes from `device`: TCP on the CPU, NCCL on CUDA (a build
/// with the `nccl` feature).
pub fn join(launch: &Launch, device: &Device) -> Result<Box<dyn Communicator>> {
    match device {
        Device::Cpu => Ok(Box::new(Tcp::connect(launch, JOIN_TIMEOUT)?)),
        Device::Cuda(_) => join_nccl(launch, device),
        Device::Metal(_) => Err(Error::Invalid(
            "data-parallel training has no Metal backend; run one process, or set teacher.device: cpu".into(),
        )),
    }
}

#[cfg(feature = "nccl")]
fn join_nccl(launch: &Launch, device: &Device) -> Result<Box<dyn Communicator>> {
    Ok(Box::new(distill_train::parallel::Nccl::connect(
        launch,
        device,
        JOIN_TIMEOUT,
    )?))
}

#[cfg(not(feature = "nccl"))]
fn join_nccl(_: &Launch, _: &Device) -> Result<Box<dyn Communicator>> {
    Err(Error::Invalid(
        "data-parallel training on CUDA needs a build with `--features cuda,nccl` (scripts/build-cuda.sh --features cuda,nccl); or set teacher.device: cpu".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(local_rank: usize) -> Launch {
        Launch {
            rank: local_rank + 2,
            world: 4,
            local_rank,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
        }
    }

    fn rank_device(spec: &str, launch: &Launch) -> Result<String> {
        super::rank_device(spec.parse()?, launch).map(|d| d.to_string())
    }

    #[test]
    fn each_rank_takes_the_gpu_of_its_local_rank() {
        assert_eq!(rank_device("cuda", &launch(1)).unwrap(), "cuda:1");
        assert_eq!(rank_device(" CPU ", &launch(1)).unwrap(), "cpu");
        // This build has no GPU backend (CI), so `auto` is the CPU.
        if !candle_core::utils::cuda_is_available() {
            assert_eq!(rank_device("auto", &launch(0)).unwrap(), "cpu");
        }
        for (spec, want) in [("cuda:1", "LOCAL_RANK"), ("metal", "Metal")] {
            let e = rank_device(spec, &launch(0)).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("teacher.device"), "{e}");
        }
    }
}

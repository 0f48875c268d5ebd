//! Device and dtype choice: `auto | cpu | cuda[:N] | metal`, and `auto | f32 | f16 | bf16`.

use candle_core::{DType, Device};

use crate::error::{Result, TeacherError};

/// Parses a device spec. `auto` picks CUDA, then Metal, then CPU, by what this build
/// supports and the machine has. CUDA and Metal need the `cuda` / `metal` cargo features.
pub fn parse_device(spec: &str) -> Result<Device> {
    let err = |msg: String| TeacherError::Device {
        spec: spec.to_string(),
        msg,
    };
    let s = spec.trim().to_ascii_lowercase();
    match s.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            // A GPU build says its backend is available whether or not the machine has a GPU:
            // try each, and fall back with the reason logged.
            type Open = fn() -> candle_core::Result<Device>;
            let backends: [(&str, bool, Open); 2] = [
                ("CUDA", candle_core::utils::cuda_is_available(), || {
                    Device::new_cuda(0)
                }),
                ("Metal", candle_core::utils::metal_is_available(), || {
                    Device::new_metal(0)
                }),
            ];
            for (name, _, open) in backends.into_iter().filter(|b| b.1) {
                match open() {
                    Ok(d) => {
                        tracing::info!("device auto: {name} device 0");
                        return Ok(d);
                    }
                    Err(e) => tracing::warn!("device auto: {name} build but no usable GPU ({e})"),
                }
            }
            tracing::info!("device auto: CPU");
            Ok(Device::Cpu)
        }
        "metal" => Device::new_metal(0).map_err(|e| {
            err(format!(
                "{e} (Metal needs a build with `--features metal` on macOS)"
            ))
        }),
        _ => {
            let ordinal = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| err("expected `cuda` or `cuda:N`".into()))?,
                None => return Err(err("expected one of: auto, cpu, cuda, cuda:N, metal".into())),
            };
            Device::new_cuda(ordinal).map_err(|e| {
                err(format!(
                    "{e} (CUDA needs a build with `--features cuda` and a GPU)"
                ))
            })
        }
    }
}

/// Parses a dtype spec; `auto` is bf16 on CUDA, f16 on Metal, f32 on CPU.
pub fn parse_dtype(spec: &str, device: &Device) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(match device {
            Device::Cuda(_) => DType::BF16,
            Device::Metal(_) => DType::F16,
            Device::Cpu => DType::F32,
        }),
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(TeacherError::Device {
            spec: other.to_string(),
            msg: "unknown dtype; expected one of: auto, f32, f16, bf16".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_parse_on_a_cpu_build() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("CPU").unwrap().is_cpu());
        if !candle_core::utils::cuda_is_available() && !candle_core::utils::metal_is_available() {
            assert!(parse_device("auto").unwrap().is_cpu());
        }
    }

    #[test]
    fn bad_device_specs_are_clear_errors() {
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("cuda:N"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("cuda:N"), "{e}");
        if !candle_core::utils::cuda_is_available() {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }

    #[test]
    fn dtypes() {
        assert_eq!(parse_dtype("auto", &Device::Cpu).unwrap(), DType::F32);
        assert_eq!(parse_dtype("bf16", &Device::Cpu).unwrap(), DType::BF16);
        assert!(parse_dtype("f8", &Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("f32"));
    }
}

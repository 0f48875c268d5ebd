//! Device and dtype choice: `auto | cpu | cuda[:N] | metal`, and `auto | f32 | f16 | bf16`,
//! as typed values a config names (the JSON Schema lists them) and strings the CLI parses.

use std::borrow::Cow;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TeacherError};

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA, then Metal, then the CPU, by what this build supports and the machine has.
    #[default]
    Auto,
    Cpu,
    /// A CUDA device: `cuda:N`, or `cuda` (device 0; under a launcher, the rank's own).
    Cuda(Option<usize>),
    Metal,
}

impl FromStr for DeviceSpec {
    type Err = TeacherError;

    fn from_str(spec: &str) -> Result<Self> {
        let err = |msg: &str| TeacherError::Device {
            spec: spec.to_string(),
            msg: msg.into(),
        };
        let s = spec.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "auto" => DeviceSpec::Auto,
            "cpu" => DeviceSpec::Cpu,
            "metal" => DeviceSpec::Metal,
            "cuda" => DeviceSpec::Cuda(None),
            _ => match s.strip_prefix("cuda") {
                Some(rest) => DeviceSpec::Cuda(Some(
                    rest.strip_prefix(':')
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| err("expected `cuda` or `cuda:N`"))?,
                )),
                None => return Err(err("expected one of: auto, cpu, cuda, cuda:N, metal")),
            },
        })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(None) => f.write_str("cuda"),
            DeviceSpec::Cuda(Some(n)) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => f.write_str("metal"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: TeacherError| {
            serde::de::Error::custom(match e {
                TeacherError::Device { msg, .. } => format!("`{s}`: {msg}"),
                other => other.to_string(),
            })
        })
    }
}

impl schemars::JsonSchema for DeviceSpec {
    fn schema_name() -> Cow<'static, str> {
        "DeviceSpec".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "auto | cpu | cuda | cuda:N | metal",
            "pattern": "^(auto|cpu|cuda(:[0-9]+)?|metal)$"
        })
    }
}

impl DeviceSpec {
    /// Opens the device. CUDA and Metal need the `cuda` / `metal` cargo features.
    pub fn open(self) -> Result<Device> {
        let err = |msg: String| TeacherError::Device {
            spec: self.to_string(),
            msg,
        };
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(auto_device()),
            DeviceSpec::Metal => Device::new_metal(0).map_err(|e| {
                err(format!(
                    "{e} (Metal needs a build with `--features metal` on macOS)"
                ))
            }),
            DeviceSpec::Cuda(ordinal) => Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| {
                err(format!(
                    "{e} (CUDA needs a build with `--features cuda` and a GPU)"
                ))
            }),
        }
    }
}

/// CUDA, then Metal, then the CPU. A GPU build says its backend is available whether or not
/// the machine has a GPU: each is tried, and a fallback logs the reason.
fn auto_device() -> Device {
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
                return d;
            }
            Err(e) => tracing::warn!("device auto: {name} build but no usable GPU ({e})"),
        }
    }
    tracing::info!("device auto: CPU");
    Device::Cpu
}

/// The dtype a model's dense weights and activations take.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DTypeSpec {
    /// bf16 on CUDA, f16 on Metal, f32 on the CPU.
    #[default]
    Auto,
    #[serde(alias = "float32")]
    F32,
    #[serde(alias = "float16")]
    F16,
    #[serde(alias = "bfloat16")]
    Bf16,
}

impl FromStr for DTypeSpec {
    type Err = TeacherError;

    fn from_str(spec: &str) -> Result<Self> {
        Ok(match spec.trim().to_ascii_lowercase().as_str() {
            "auto" => DTypeSpec::Auto,
            "f32" | "float32" => DTypeSpec::F32,
            "f16" | "float16" => DTypeSpec::F16,
            "bf16" | "bfloat16" => DTypeSpec::Bf16,
            other => {
                return Err(TeacherError::Device {
                    spec: other.to_string(),
                    msg: "unknown dtype; expected one of: auto, f32, f16, bf16".into(),
                })
            }
        })
    }
}

impl DTypeSpec {
    /// The dtype on `device`.
    pub fn on(self, device: &Device) -> DType {
        match self {
            DTypeSpec::Auto => match device {
                Device::Cuda(_) => DType::BF16,
                Device::Metal(_) => DType::F16,
                Device::Cpu => DType::F32,
            },
            DTypeSpec::F32 => DType::F32,
            DTypeSpec::F16 => DType::F16,
            DTypeSpec::Bf16 => DType::BF16,
        }
    }
}

/// Parses and opens a device spec (see [`DeviceSpec`]).
pub fn parse_device(spec: &str) -> Result<Device> {
    spec.parse::<DeviceSpec>()?.open()
}

/// Parses a dtype spec; `auto` is bf16 on CUDA, f16 on Metal, f32 on CPU.
pub fn parse_dtype(spec: &str, device: &Device) -> Result<DType> {
    Ok(spec.parse::<DTypeSpec>()?.on(device))
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
    fn specs_read_and_write_as_configs_spell_them() {
        for s in ["auto", "cpu", "cuda", "cuda:1", "metal"] {
            let d: DeviceSpec = serde_yaml::from_str(s).unwrap();
            assert_eq!(serde_yaml::to_string(&d).unwrap().trim(), s);
        }
        let e = serde_yaml::from_str::<DeviceSpec>("tpu")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tpu") && e.contains("cuda:N"), "{e}");
        let d: DTypeSpec = serde_yaml::from_str("bfloat16").unwrap();
        assert_eq!(d, DTypeSpec::Bf16);
        assert_eq!(serde_yaml::to_string(&d).unwrap().trim(), "bf16");
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

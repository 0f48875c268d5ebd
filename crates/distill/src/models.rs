//! Looking at a model without running a job: its architecture and sizes, its tokens, and the
//! options a command loads it with.

use distill_teacher::{load_tokenizer, resolve, GgufCompute, HubOptions, TeacherSource};

use crate::error::Result;

/// Architecture, sizes, dtypes, bytes on disk and tokenizer of the model at `source`.
pub fn inspect(source: &str) -> Result<ModelInfo> {
    let s = TeacherSource::parse(source)?;
    Ok(distill_teacher::inspect(&s, &HubOptions::from_env())?)
}

/// The token ids `source`'s tokenizer gives for `text`, with each id's piece.
pub fn tokenize(source: &str, text: &str) -> Result<Vec<(u32, String)>> {
    let s = TeacherSource::parse(source)?;
    let tok = load_tokenizer(&resolve(&s, &HubOptions::from_env())?)?;
    tok.encode(text)?
        .into_iter()
        .map(|id| Ok((id, tok.decode(&[id])?)))
        .collect()
}

/// How a GGUF model's matrices are multiplied when a command loads it.
pub use distill_teacher::GgufCompute as GgufMode;
pub use distill_teacher::{DTypeSpec, DeviceSpec, LoadOptions, ModelInfo};

/// Load options from a device (`auto | cpu | cuda[:N] | metal`), a dtype (`auto | f32 | f16 |
/// bf16`) and a GGUF mode; Hub access from the environment.
pub fn load_options(
    device: DeviceSpec,
    dtype: DTypeSpec,
    gguf: GgufCompute,
) -> Result<LoadOptions> {
    let device = device.open()?;
    Ok(LoadOptions {
        dtype: dtype.on(&device),
        device,
        gguf_mode: gguf,
        hub: HubOptions::from_env(),
        non_finite: distill_teacher::NonFinite::Refuse,
    })
}

//! Shrink rules: a student configuration derived from the teacher's.

use distill_models::LlamaConfig;
use serde::{Deserialize, Serialize};

use crate::error::{cfg_err, StudentError};

/// The `student:` section of a run config. Unset sizes follow the teacher; a narrower `hidden`
/// keeps the teacher's head size, so the head count follows from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    /// Number of layers.
    #[serde(default)]
    pub layers: Option<usize>,
    /// Width of the residual stream.
    #[serde(default)]
    pub hidden: Option<usize>,
    /// Width of the feed-forward layers (default: the teacher's, scaled with `hidden`).
    #[serde(default)]
    pub intermediate: Option<usize>,
    /// Attention heads (default: `hidden / teacher head_dim`).
    #[serde(default)]
    pub heads: Option<usize>,
    /// Key/value heads (default: keeps the teacher's query-to-KV ratio).
    #[serde(default)]
    pub kv_heads: Option<usize>,
    #[serde(default)]
    pub init: InitConfig,
    /// A vocabulary trimmed to the training corpus (causal-LM runs); unset: the teacher's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<crate::vocab::VocabConfig>,
    /// The student's own tokenizer (a `tokenizer.json`, or a model source whose tokenizer it
    /// takes: a GGUF file, a Hugging Face folder, `hf://org/name`), whose pieces the teacher's
    /// vocabulary holds under other ids: its ids are mapped onto the teacher's by string
    /// (`distill.vocab: shared`). Unset: the teacher's tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// The model the student is shaped and initialised from instead of the teacher — its
    /// config is what the shrink rules cut, `init: from_teacher` copies its layers, and its
    /// tokenizer is the student's (a GGUF file, a Hugging Face folder, `hf://org/name`):
    /// distillation across tokenizers (`distill.vocab: cross`) from a teacher of another family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Dtype of the layers' matrix products while training a causal-LM student: `f32` (the
    /// default) or `bf16`. The weights stay f32 either way (the optimiser's master copy); on a
    /// GPU bf16 products run on its tensor cores, on a CPU they are slower than f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matmul_dtype: Option<distill_models::MatmulType>,
}

impl StudentConfig {
    /// `matmul_dtype` as a dtype (`None` for f32, the weights' own).
    pub fn matmul_dtype(&self) -> Option<candle_core::DType> {
        self.matmul_dtype
            .and_then(distill_models::MatmulType::compute_dtype)
    }
}

/// Where the student's weights start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InitConfig {
    /// Copy the embeddings and some teacher layers (`layers`, or evenly spaced ones including
    /// the first and last), slicing widths by importance when the student is narrower.
    FromTeacher {
        #[serde(default)]
        layers: Option<Vec<usize>>,
        /// How the teacher's parts are ranked for the cut.
        #[serde(default)]
        importance: InitImportance,
    },
    /// Normal(0, 0.02) weights and unit norms, from `seed`.
    Random {
        #[serde(default)]
        seed: u64,
    },
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig::FromTeacher {
            layers: None,
            importance: InitImportance::default(),
        }
    }
}

/// How a `from_teacher` student ranks the teacher's parts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InitImportance {
    /// Weight norms: evenly spaced layers (the first and last included), and heads, FFN
    /// neurons and residual channels by the norms of their weights. Needs no data.
    #[default]
    Weights,
    /// Activations on calibration blocks of the run's training data (Minitron): layers by
    /// block influence (ShortGPT: those that change the residual stream most), then heads,
    /// FFN neurons and residual channels by their activations in the model those layers make.
    Activations,
}

/// The student's `LlamaConfig`, from the teacher's and the shrink rules.
pub fn derive_config(
    teacher: &LlamaConfig,
    s: &StudentConfig,
) -> Result<LlamaConfig, StudentError> {
    let hd = teacher.head_dim();
    let layers = s.layers.unwrap_or(teacher.num_hidden_layers);
    if layers == 0 {
        return Err(cfg_err("layers", "must be at least 1"));
    }
    // A head size independent of the width (Gemma 3, Qwen3): heads and width are chosen apart.
    let independent =
        teacher.head_dim.is_some() && teacher.num_attention_heads * hd != teacher.hidden_size;
    let heads = match (s.heads, s.hidden) {
        (Some(h), _) => h,
        (None, _) if independent => teacher.num_attention_heads,
        (None, Some(hidden)) => {
            if hidden % hd != 0 {
                return Err(cfg_err(
                    "hidden",
                    format!("{hidden} is not a multiple of the teacher's head size {hd}"),
                ));
            }
            hidden / hd
        }
        (None, None) => teacher.num_attention_heads,
    };
    if heads == 0 {
        return Err(cfg_err("heads", "must be at least 1"));
    }
    let hidden = s.hidden.unwrap_or(if independent {
        teacher.hidden_size
    } else {
        heads * hd
    });
    if !independent && hidden != heads * hd {
        return Err(cfg_err(
            "hidden",
            format!("{hidden} must equal heads × head_dim = {heads} × {hd} (the head size is kept from the teacher)"),
        ));
    }
    let group = teacher.num_attention_heads / teacher.kv_heads();
    let kv_heads = s.kv_heads.unwrap_or_else(|| (heads / group).max(1));
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(cfg_err(
            "kv_heads",
            format!("{kv_heads} must divide heads {heads}"),
        ));
    }
    let intermediate = match s.intermediate {
        Some(0) => return Err(cfg_err("intermediate", "must be at least 1")),
        Some(f) => f,
        None => {
            let scaled =
                teacher.intermediate_size as f64 * hidden as f64 / teacher.hidden_size as f64;
            ((scaled / 32.0).round() as usize).max(1) * 32
        }
    };
    if layers > teacher.num_hidden_layers
        || hidden > teacher.hidden_size
        || intermediate > teacher.intermediate_size
        || heads > teacher.num_attention_heads
    {
        tracing::warn!(
            layers, hidden, intermediate, heads,
            "the student is larger than the teacher in some dimension; distillation usually shrinks"
        );
    }
    Ok(LlamaConfig {
        num_hidden_layers: layers,
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim: (hidden != heads * hd).then_some(hd),
        layer_types: layer_types_of(
            teacher,
            &evenly_spaced_layers(teacher.num_hidden_layers, layers),
        ),
        ..teacher.clone()
    })
}

/// `n` layer indices out of `total`, evenly spaced and including the first and the last.
pub fn evenly_spaced_layers(total: usize, n: usize) -> Vec<usize> {
    if n == 1 {
        return vec![total - 1];
    }
    (0..n)
        .map(|i| ((i * (total - 1)) as f64 / (n - 1) as f64).round() as usize)
        .collect()
}

/// The per-layer attention kinds (`layer_types`) of a student whose layers start from the
/// teacher layers `map`: each keeps its teacher layer's kind.
pub fn layer_types_of(teacher: &LlamaConfig, map: &[usize]) -> Option<Vec<String>> {
    let types = teacher.layer_types.as_ref()?;
    Some(map.iter().map(|&j| types[j].clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_evenly_spaced_with_both_ends() {
        assert_eq!(evenly_spaced_layers(30, 6), vec![0, 6, 12, 17, 23, 29]);
        assert_eq!(evenly_spaced_layers(12, 6), vec![0, 2, 4, 7, 9, 11]);
        assert_eq!(evenly_spaced_layers(4, 1), vec![3]);
    }

    fn smollm2() -> LlamaConfig {
        LlamaConfig::from_json(
            r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
                "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"tie_word_embeddings":true}"#,
            "t",
        )
        .unwrap()
    }

    #[test]
    fn shrink_rules_keep_head_dim_and_gqa_ratio() {
        let t = smollm2();
        let s = derive_config(
            &t,
            &StudentConfig {
                layers: Some(6),
                hidden: Some(384),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (
                s.num_hidden_layers,
                s.hidden_size,
                s.num_attention_heads,
                s.kv_heads(),
                s.head_dim()
            ),
            (6, 384, 6, 2, 64)
        );
        assert_eq!(s.intermediate_size, 1024);
        assert_eq!(s.vocab_size, 49152);
        assert!(s.tie_word_embeddings);
        let same = derive_config(
            &t,
            &StudentConfig {
                layers: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (
                same.hidden_size,
                same.num_attention_heads,
                same.intermediate_size
            ),
            (576, 9, 1536)
        );
    }

    #[test]
    fn bad_shapes_name_the_key() {
        let t = smollm2();
        let e = derive_config(
            &t,
            &StudentConfig {
                hidden: Some(300),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("student.hidden") && e.contains("64"), "{e}");
        let e = derive_config(
            &t,
            &StudentConfig {
                hidden: Some(384),
                heads: Some(4),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("student.hidden"), "{e}");
        let e = derive_config(
            &t,
            &StudentConfig {
                heads: Some(6),
                kv_heads: Some(4),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("student.kv_heads"), "{e}");
        let e = derive_config(
            &t,
            &StudentConfig {
                layers: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("student.layers"), "{e}");
    }
}

//! What the one decoder forward switches on, per family: the norms, their scale, q/k norms,
//! fused matrices, and whether a layer attends globally or through a window.

/// How a family's layers are built: what the shared decoder forward switches on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    /// RMSNorm scales by `offset + w` (Gemma: `1 + w`, its weights stored around zero).
    pub norm_offset: f64,
    /// The four per-layer norms, by Hugging Face name after `model.layers.N.`.
    pub norms: LayerNorms,
    /// RMSNorm over each head of q and k before the rotary embedding (`self_attn.q_norm`).
    pub qk_norm: bool,
    /// The embedding output is multiplied by √hidden.
    pub scaled_embedding: bool,
    /// q, k and v stored as one matrix, `self_attn.qkv_proj` (rows q, then k, then v).
    pub fused_qkv: bool,
    /// gate and up stored as one matrix, `mlp.gate_up_proj` (rows gate, then up).
    pub fused_gate_up: bool,
}

/// The names of a layer's norms; `None` where the family has no such norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNorms {
    /// Before attention.
    pub attention_input: &'static str,
    /// On the attention's output, before the residual add (Gemma's sandwich norm).
    pub attention_output: Option<&'static str>,
    /// Before the feed-forward block.
    pub mlp_input: &'static str,
    /// On the feed-forward output, before the residual add.
    pub mlp_output: Option<&'static str>,
}

impl LayerNorms {
    /// Every norm of a layer, by name.
    pub fn names(&self) -> Vec<&'static str> {
        [
            Some(self.attention_input),
            self.attention_output,
            Some(self.mlp_input),
            self.mlp_output,
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Whether a layer attends to every earlier position or to a window of the latest ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Global,
    /// Attends to the keys less than `window` positions back (its own included).
    Sliding {
        window: usize,
    },
}

//! The Hugging Face names of a decoder's per-layer tensors (`model.layers.N.…`): the one place
//! that spells them.

/// The layer index and the rest of a per-layer Hugging Face name (`model.layers.3.mlp.up_proj.weight`
/// → `(3, "mlp.up_proj.weight")`).
pub fn split_layer_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix(LAYER_PREFIX)?;
    let (layer, rest) = rest.split_once('.')?;
    Some((layer.parse().ok()?, rest))
}

/// The prefix of every per-layer tensor name in the decoder families.
pub const LAYER_PREFIX: &str = "model.layers.";

/// The Hugging Face name of a per-layer tensor.
pub fn layer_name(layer: usize, rest: &str) -> String {
    format!("{LAYER_PREFIX}{layer}.{rest}")
}

/// `model.layers.N`: what every tensor of layer `layer` starts with (a `.` follows).
pub fn layer_prefix(layer: usize) -> String {
    format!("{LAYER_PREFIX}{layer}")
}

/// The layer a per-layer tensor belongs to.
pub fn layer_of(name: &str) -> Option<usize> {
    split_layer_name(name).map(|(layer, _)| layer)
}

/// The linear projections a decoder layer may hold, by name after `model.layers.N.` (the
/// unfused ones, then Phi-3's fused ones).
pub const LAYER_MATRICES: [&str; 9] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "self_attn.qkv_proj",
    "mlp.gate_up_proj",
];

/// Whether `name` is the weight matrix of a decoder layer's linear projection (not a norm, a
/// bias or a q/k norm).
pub fn is_layer_matrix(name: &str) -> bool {
    split_layer_name(name)
        .and_then(|(_, rest)| rest.strip_suffix(".weight"))
        .is_some_and(|m| LAYER_MATRICES.contains(&m))
}

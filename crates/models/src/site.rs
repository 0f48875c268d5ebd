//! Where a layer's linear projections read their input, in the decoder families and in BERT:
//! the places calibration statistics are collected at and surgery cuts through.

/// Where a layer's linear projections read their input (a Llama decoder's or a BERT encoder's:
/// both have these four): what calibration statistics (activation norms, Hessians) are
/// collected at. Projections at one site share its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinearSite {
    /// The input norm's output (BERT: the layer's input, already normalised), read by the
    /// q, k and v projections.
    AttentionInput,
    /// The attention heads' output, read by the o projection.
    AttentionOutput,
    /// The post-attention norm's output, read by the gate and up (BERT: intermediate)
    /// projections.
    MlpInput,
    /// `silu(gate)·up` (BERT: `gelu(intermediate)`), read by the down (output) projection.
    MlpOutput,
}

impl LinearSite {
    pub const ALL: [LinearSite; 4] = [
        LinearSite::AttentionInput,
        LinearSite::AttentionOutput,
        LinearSite::MlpInput,
        LinearSite::MlpOutput,
    ];

    /// The projections reading this input, as tensor-name suffixes after `model.layers.N.`.
    pub fn projections(self) -> &'static [&'static str] {
        match self {
            LinearSite::AttentionInput => {
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
            }
            LinearSite::AttentionOutput => &["self_attn.o_proj"],
            LinearSite::MlpInput => &["mlp.gate_proj", "mlp.up_proj"],
            LinearSite::MlpOutput => &["mlp.down_proj"],
        }
    }

    /// The projections reading this input in a BERT layer, as tensor-name suffixes after
    /// `encoder.layer.N.` (the intermediate activation is GELU's output).
    pub fn bert_projections(self) -> &'static [&'static str] {
        match self {
            LinearSite::AttentionInput => &[
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
            ],
            LinearSite::AttentionOutput => &["attention.output.dense"],
            LinearSite::MlpInput => &["intermediate.dense"],
            LinearSite::MlpOutput => &["output.dense"],
        }
    }

    /// The site whose input the matrix `model.layers.N.<suffix>.weight` reads, if any.
    pub fn of_matrix(name: &str) -> Option<(usize, LinearSite)> {
        let (layer, rest) = crate::family::split_layer_name(name)?;
        let suffix = rest.strip_suffix(".weight")?;
        LinearSite::ALL
            .into_iter()
            .find(|s| s.projections().contains(&suffix))
            .map(|s| (layer, s))
    }
}

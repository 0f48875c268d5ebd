//! Every compression technique by the name configs give it (`step:`), like the loss table:
//! a new technique is a new module that defines its settings, its pass and one
//! [`Technique`] entry, plus one line in [`TECHNIQUES`]. Nothing else changes.

use crate::framework::technique::Technique;

/// Every technique, in the order documentation lists them.
pub(crate) const TECHNIQUES: &[Technique] = &[
    crate::passes::pruning::TECHNIQUE,
    crate::passes::heal::TECHNIQUE,
    crate::passes::low_rank::TECHNIQUE,
    crate::passes::sharing::TECHNIQUE,
    crate::passes::quantization::TECHNIQUE,
];

/// The technique called `name`.
pub(crate) fn technique(name: &str) -> Option<&'static Technique> {
    TECHNIQUES.iter().find(|t| t.name == name)
}

//! Every compression technique by the name configs give it (`step:`), like the loss table:
//! a new technique is a new module that defines its settings, its pass and one
//! [`Technique`] entry, plus one line in [`TECHNIQUES`]. Nothing else changes.

use crate::technique::Technique;

/// Every technique, in the order documentation lists them.
pub const TECHNIQUES: &[Technique] = &[
    crate::prune::TECHNIQUE,
    crate::heal::TECHNIQUE,
    crate::low_rank::TECHNIQUE,
    crate::share::TECHNIQUE,
    crate::quantize::TECHNIQUE,
];

/// The technique called `name`.
pub fn technique(name: &str) -> Option<&'static Technique> {
    TECHNIQUES.iter().find(|t| t.name == name)
}

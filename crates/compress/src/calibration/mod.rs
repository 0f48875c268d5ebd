//! Calibration: the walk that runs a model layer by layer on calibration tokens and collects
//! what data-aware methods need at each linear site ([`walk`]), and the optimal-brain-surgeon
//! arithmetic over the Hessians it gathers ([`obs`]).

pub mod obs;
pub mod walk;

//! # distill-student
//!
//! Owns the design of the student: shrink rules that derive a smaller configuration of the
//! teacher's family (fewer layers, narrower hidden and FFN, fewer heads at the same head size),
//! initialisation from the teacher's layers (every k-th layer, as DistilBERT did, with width
//! slicing) or at random from a seed, custom compact designs, and saving in Hugging Face layout
//! so that transformers and llama.cpp tooling load the result.
//!
//! The student is built on `distill-models`' trainable weight source; this crate decides its
//! shape and starting point, the trainer (`distill-train`) owns the learning.

//! # distill-student
//!
//! Owns the design of the student: shrink rules that derive a smaller configuration of the
//! teacher's family (fewer layers, narrower hidden and FFN, fewer heads at the same head size),
//! initialisation from the teacher's layers (evenly spaced or listed layers, as DistilBERT did,
//! with importance-based width slicing when the student is narrower) or at random from a seed,
//! and saving in Hugging Face layout so that transformers and llama.cpp tooling load the result.
//!
//! The student's weights are the variables of a `VarMap`; this crate decides their shape and
//! starting values, the trainer (`distill-train`) owns the learning.

mod bert;
mod design;
mod error;
mod init;
mod llama;
mod save;
pub mod vocab;

pub use bert::{
    bert_classifier_shapes, build_bert_student, derive_bert_config, save_bert_classifier,
    BertExport, BertStudent,
};
pub use design::{derive_config, evenly_spaced_layers, InitConfig, InitImportance, StudentConfig};
pub use error::StudentError;
pub use init::Student;
pub use llama::{build_student, student_from_tensors, LlamaStudent};
pub use save::{save_hf, HfExport};
pub use vocab::{VocabConfig, VocabTrim};

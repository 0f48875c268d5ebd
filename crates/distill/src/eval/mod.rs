//! `distill eval`: how well a model does on data — a causal LM's perplexity and speed on a
//! text ([`text`]), a classifier's accuracy and confusion matrix on labelled examples
//! ([`labelled`]), a student's answers judged by its teacher ([`answers`]).

mod answers;
mod labelled;
mod text;

pub use answers::{
    evaluate_answers, evaluate_prompt_file, samples_table, AnswerEval, AnswerEvalOptions,
    EvalPrompt, PromptFile, Sample,
};
pub use labelled::{evaluate_labelled, LabelledEval};
pub use text::{
    bits_per_byte_at, bits_per_byte_of_targets, damaged, evaluate_text, TextEval, TextEvalOptions,
};

//! Training data. Causal-LM distillation: documents from text files, folders and JSONL (or
//! conversations, each in a block of its own with its assistant tokens marked), split
//! into train and validation by whole documents (seeded), tokenised with the teacher's
//! tokenizer, and packed into fixed-length blocks with EOS between documents. Classification:
//! labelled examples (e-mail folders, JSONL, CSV) split by class and encoded with the
//! tokenizer's own special tokens, cut to a length.

mod chat;
mod cross;
mod documents;
mod email;
mod encode;
mod labelled;
mod load;
mod pack;
mod split;

pub use cross::{CrossBlock, CrossSet, CrossVocab, PaddedTeacher};
pub use documents::{DataError, Document, DocumentSource, Turn};
pub use email::{email_text, EmailOptions, EmailText, Undecodable};
pub use encode::{encode_examples, EncodedSet};
pub use labelled::{
    load_labelled, split_stratified, Example, LabelledDataConfig, LabelledSet, LabelledSource,
    LabelledSplit, Skipped, TextFormat,
};
pub use load::load_documents;
pub use pack::{
    epoch_order, pack_blocks, pack_conversations, BlockSet, ChatPacking, Packing, Rendered,
};
pub use split::{split_documents, Split};

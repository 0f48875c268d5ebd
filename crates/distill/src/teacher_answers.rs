//! Teacher-written answers (sequence-level distillation): `distill cache-teacher` with
//! `teacher.cache.generate` has the teacher answer the run's prompts (`data.source.kind:
//! prompts`) before it caches its targets, and a run trains on the conversations the answers
//! complete.
//!
//! The answers live in the cache folder, `answers/{split}-{n}.json`, one file per batch of
//! prompts, each written whole (a temporary file, then a rename): a stopped session keeps the
//! batches it finished and the next one makes the rest. A file made for other prompts, by
//! another teacher or with other settings is made again. The ranks of a group take every
//! `world`-th batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use distill_models::generate::{Finish, GenerateOptions, Sampling};
use distill_teacher::{AnswerSettings, Teacher};
use distill_train::data::{Document, Split, Turn};
use distill_train::{Event, Observer, StopFlag};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The splits' names in answer files.
const SPLITS: [&str; 2] = ["train", "valid"];

/// One batch of answers as written.
#[derive(Serialize, Deserialize)]
struct AnswerFile {
    /// The teacher's weights (their digest), and how it answered.
    teacher_sha256: String,
    settings: AnswerSettings,
    answers: Vec<StoredAnswer>,
}

/// The teacher's answer to one prompt.
#[derive(Clone, Serialize, Deserialize)]
struct StoredAnswer {
    /// The prompt's turns (their digest): an answer is found by what it answers.
    prompt_sha256: String,
    text: String,
    ids: Vec<u32>,
    /// `eos`, or `budget` for an answer cut short at `max_new_tokens`.
    finish: Finish,
}

/// What a session of answering did.
#[derive(Debug, Default)]
pub struct AnswersMade {
    /// Prompts answered in this session (the rest were answered before, or by other ranks).
    pub answered: usize,
    pub new_tokens: usize,
    /// Answers cut short at the token budget, of those made in this session.
    pub cut: usize,
    pub seconds: f64,
    pub interrupted: bool,
}

/// Where a cache keeps the teacher's answers.
fn answers_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join(distill_cache::ANSWERS_DIR)
}

/// Refuses to write answers into a folder that is not a cache's (new, empty, or holding a
/// cache's files only): the tool never writes among files it did not make.
fn check_cache_dir(cache_dir: &Path) -> Result<()> {
    let is_cache = cache_dir.join(distill_cache::manifest::MANIFEST).is_file();
    if cache_dir.exists() && !is_cache && distill_cache::holds_other_files(cache_dir) {
        return Err(Error::Job(format!(
            "teacher.cache: {} holds other files and no {}; give the cache an empty or new directory",
            cache_dir.display(),
            distill_cache::manifest::MANIFEST
        )));
    }
    Ok(())
}

fn file_of(cache_dir: &Path, split: usize, batch: usize) -> PathBuf {
    answers_dir(cache_dir).join(format!("{}-{batch:05}.json", SPLITS[split]))
}

/// What identifies a prompt: its turns.
fn prompt_digest(turns: &[Turn]) -> String {
    let json = serde_json::to_string(turns).expect("turns serialise");
    format!("{:x}", Sha256::digest(json.as_bytes()))
}

/// A prompt's turns (a prompt document without them is a bug of the reader).
fn turns(d: &Document) -> &[Turn] {
    d.turns.as_deref().unwrap_or_default()
}

/// Who answers, and how.
pub(crate) struct Answerer<'a> {
    pub(crate) teacher: &'a Teacher,
    pub(crate) teacher_sha256: String,
    pub(crate) settings: &'a AnswerSettings,
    pub(crate) cache_dir: &'a Path,
    pub(crate) rank: usize,
    pub(crate) world: usize,
    pub(crate) observer: &'a dyn Observer,
}

impl Answerer<'_> {
    /// Answers every prompt of `split` that has no answer yet (this rank's share of the
    /// batches), writing a file per batch; stops between batches when `stop` is set.
    pub(crate) fn answer(&self, split: &Split, stop: &StopFlag) -> Result<AnswersMade> {
        let started = Instant::now();
        check_cache_dir(self.cache_dir)?;
        let dir = answers_dir(self.cache_dir);
        std::fs::create_dir_all(&dir).map_err(crate::error::io(&dir))?;
        let b = self.settings.batch_size;
        let parts = [&split.train, &split.validation];
        let jobs: Vec<(usize, usize)> = (0..2)
            .flat_map(|s| (0..parts[s].len().div_ceil(b)).map(move |n| (s, n)))
            .collect();
        let pending: Vec<(usize, usize)> = jobs
            .iter()
            .copied()
            .filter(|&(s, n)| {
                !self.is_done(s, n, &parts[s][n * b..((n + 1) * b).min(parts[s].len())])
            })
            .collect();
        let mine: Vec<(usize, usize)> = pending
            .iter()
            .copied()
            .skip(self.rank)
            .step_by(self.world)
            .collect();
        let total: usize = mine
            .iter()
            .map(|&(s, n)| batch_len(parts[s].len(), n, b))
            .sum();
        tracing::info!(
            prompts = split.train.len() + split.validation.len(),
            pending = pending
                .iter()
                .map(|&(s, n)| batch_len(parts[s].len(), n, b))
                .sum::<usize>(),
            this_rank = total,
            max_new_tokens = self.settings.max_new_tokens,
            temperature = self.settings.temperature,
            "the teacher answers the run's prompts"
        );
        let stage = "teacher-answers";
        self.observer.event(&Event::Started {
            stage,
            unit: "prompts",
            total: total as u64,
            done: 0,
        });
        let mut made = AnswersMade::default();
        for &(s, n) in &mine {
            if stop.is_set() {
                made.interrupted = true;
                break;
            }
            let prompts = &parts[s][n * b..((n + 1) * b).min(parts[s].len())];
            let answers = self.answer_batch(prompts, n)?;
            made.answered += answers.len();
            made.new_tokens += answers.iter().map(|a| a.ids.len()).sum::<usize>();
            made.cut += answers
                .iter()
                .filter(|a| a.finish == Finish::Budget)
                .count();
            self.write(s, n, answers)?;
            self.observer.event(&Event::Progress {
                stage,
                done: made.answered as u64,
            });
        }
        self.observer.event(&Event::Finished { stage });
        made.seconds = started.elapsed().as_secs_f64();
        Ok(made)
    }

    /// Whether batch `n` of split `s` holds answers to exactly `prompts`, by this teacher with
    /// these settings.
    fn is_done(&self, s: usize, n: usize, prompts: &[Document]) -> bool {
        let Ok(file) = read_file(&file_of(self.cache_dir, s, n)) else {
            return false;
        };
        file.teacher_sha256 == self.teacher_sha256
            && &file.settings == self.settings
            && file.answers.len() == prompts.len()
            && file
                .answers
                .iter()
                .zip(prompts)
                .all(|(a, p)| a.prompt_sha256 == prompt_digest(turns(p)))
    }

    /// The teacher's answers to `prompts`, generated together; batch `n` seeds its samplers.
    fn answer_batch(&self, prompts: &[Document], n: usize) -> Result<Vec<StoredAnswer>> {
        let tok = &self.teacher.tokenizer;
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                let text = tok
                    .render_chat(&crate::chat_data::messages(turns(p)), true)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", p.id)))?;
                Ok(tok.encode_continuation(&text)?)
            })
            .collect::<Result<_>>()?;
        let s = self.settings;
        let opts = GenerateOptions {
            max_new_tokens: s.max_new_tokens,
            sampling: Sampling {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                seed: s.seed.wrapping_add(n as u64),
            },
            stop_ids: crate::generate::stop_ids(tok),
        };
        let spec = self.teacher.source.to_string();
        let (generations, _) =
            crate::generate::run_decoder(&self.teacher.model, &spec, &ids, &opts, &mut |_, _| {
                false
            })?;
        generations
            .into_iter()
            .zip(prompts)
            .map(|(g, p)| {
                Ok(StoredAnswer {
                    prompt_sha256: prompt_digest(turns(p)),
                    text: tok.decode(&g.tokens)?,
                    ids: g.tokens,
                    finish: g.finish,
                })
            })
            .collect()
    }

    fn write(&self, s: usize, n: usize, answers: Vec<StoredAnswer>) -> Result<()> {
        let path = file_of(self.cache_dir, s, n);
        if path.exists() {
            // Only an answers file is made again.
            read_file(&path).map_err(|e| {
                Error::Job(format!(
                    "teacher.cache: {e}; it is not replaced (move it away)"
                ))
            })?;
        }
        let file = AnswerFile {
            teacher_sha256: self.teacher_sha256.clone(),
            settings: self.settings.clone(),
            answers,
        };
        let json = serde_json::to_vec_pretty(&file).expect("answers serialise");
        distill_files::write_file(&path, &json)?;
        Ok(())
    }
}

fn batch_len(len: usize, n: usize, b: usize) -> usize {
    ((n + 1) * b).min(len) - n * b
}

fn read_file(path: &Path) -> Result<AnswerFile> {
    let bytes = std::fs::read(path).map_err(crate::error::io(path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: not an answers file ({e})", path.display())))
}

/// What attaching the answers found.
#[derive(Debug, Default)]
pub struct Attached {
    pub conversations: usize,
    /// Answers cut short at the token budget (kept, marked: their end of turn is no target).
    pub cut: usize,
    /// Empty answers (the teacher ended at once): their prompts are left out.
    pub empty: usize,
}

/// The conversations of `split`'s prompts completed by the teacher's answers in `cache_dir`
/// (made with `settings`); a prompt without one is an error saying to run `distill
/// cache-teacher`.
pub(crate) fn attach_answers(
    split: Split,
    cache_dir: &Path,
    settings: &AnswerSettings,
) -> Result<(Split, Attached)> {
    let answers = read_answers(cache_dir, settings)?;
    let mut stats = Attached::default();
    let mut complete = |docs: Vec<Document>| -> Result<Vec<Document>> {
        let mut out = Vec::with_capacity(docs.len());
        for mut d in docs {
            let key = prompt_digest(turns(&d));
            let a = answers.get(&key).ok_or_else(|| {
                Error::Job(format!(
                    "teacher.cache.generate: the teacher has not answered the prompt {} yet (or answered it with other settings); run `distill cache-teacher` with this config",
                    d.id
                ))
            })?;
            if a.text.trim().is_empty() {
                stats.empty += 1;
                continue;
            }
            stats.conversations += 1;
            stats.cut += usize::from(a.finish == Finish::Budget);
            let t = d.turns.get_or_insert_with(Vec::new);
            t.push(Turn {
                role: "assistant".into(),
                content: a.text.clone(),
                cut: a.finish == Finish::Budget,
            });
            d.text = format!("{}\n{}", d.text, a.text);
            out.push(d);
        }
        Ok(out)
    };
    let train = complete(split.train)?;
    let validation = complete(split.validation)?;
    tracing::info!(
        conversations = stats.conversations,
        cut = stats.cut,
        empty = stats.empty,
        "the teacher's answers complete the prompts (answers cut at the token budget keep no end of turn; empty ones are left out)"
    );
    Ok((Split { train, validation }, stats))
}

/// Every answer in `cache_dir` made with `settings`, by prompt.
fn read_answers(
    cache_dir: &Path,
    settings: &AnswerSettings,
) -> Result<HashMap<String, StoredAnswer>> {
    let dir = answers_dir(cache_dir);
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let file = read_file(&path)?;
        if &file.settings != settings {
            continue;
        }
        for a in file.answers {
            out.insert(a.prompt_sha256.clone(), a);
        }
    }
    Ok(out)
}

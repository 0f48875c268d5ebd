//! A student judged by what it answers, as its users judge it: on held-out prompts, (a) the
//! reverse KL per token of its sampled answers, graded by the teacher (how far from the
//! teacher's distribution the student's own text leads it), (b) the teacher's negative
//! log-likelihood per token of its greedy answers (how likely the teacher finds them), (c) the
//! share of greedy answers identical to the teacher's over their first tokens, and (d) a
//! samples table, teacher and student side by side.

use std::fmt::Write as _;
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use distill_models::generate::{Finish, GenerateOptions, Generation, Sampling};
use distill_teacher::{LoadedTokenizer, Teacher};
use serde::Serialize;

use crate::error::{Error, Result};

/// How the answers are made and compared.
#[derive(Clone, Debug)]
pub struct AnswerEvalOptions {
    /// New tokens at most per answer.
    pub max_new_tokens: usize,
    /// Leading tokens of the greedy answers compared with the teacher's.
    pub match_tokens: usize,
    /// Prompts shown in the samples table.
    pub samples: usize,
    /// Seed of the student's sampled answers.
    pub seed: u64,
    /// Sequences per forward pass when grading.
    pub batch: usize,
}

impl Default for AnswerEvalOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            match_tokens: 32,
            samples: 5,
            seed: 0,
            batch: 8,
        }
    }
}

/// One prompt for the evaluation: its token ids (rendered through the chat template), and
/// what a reader of the samples table sees of it.
#[derive(Clone, Debug)]
pub struct EvalPrompt {
    pub ids: Vec<u32>,
    pub shown: String,
}

/// A prompt with the teacher's and the student's greedy answers.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub prompt: String,
    pub teacher: String,
    pub student: String,
}

/// What the student's answers measured.
#[derive(Clone, Debug, Serialize)]
pub struct AnswerEval {
    pub prompts: usize,
    /// (a) KL(student ‖ teacher) per token of the student's answers sampled at temperature 1,
    /// over the full vocabulary at each position (nats).
    pub reverse_kl: f64,
    /// (b) The teacher's negative log-likelihood per token of the student's greedy answers
    /// (nats).
    pub teacher_nll: f64,
    /// The same for the teacher's own greedy answers: the floor (b) is read against.
    pub teacher_nll_of_teacher: f64,
    /// (c) Share of prompts whose greedy answers equal the teacher's over their first
    /// `match_tokens` tokens.
    pub greedy_match: f64,
    pub match_tokens: usize,
    pub max_new_tokens: usize,
    /// Tokens graded for (a) and (b).
    pub sampled_tokens: usize,
    pub greedy_tokens: usize,
    /// Greedy answers cut at the token budget: the teacher's and the student's.
    pub teacher_cut: usize,
    pub student_cut: usize,
    pub samples: Vec<Sample>,
    pub seconds: f64,
}

impl AnswerEval {
    /// The numbers, then the samples table, in Markdown.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "On {} held-out prompts (answers of at most {} tokens):\n\n| | student |\n|---|---:|\n| reverse KL per token of its sampled answers, graded by the teacher | {:.3} |\n| teacher NLL per token of its greedy answers (teacher's own: {:.3}) | {:.3} |\n| greedy answers equal to the teacher's over the first {} tokens | {:.1}% |\n",
            self.prompts,
            self.max_new_tokens,
            self.reverse_kl,
            self.teacher_nll_of_teacher,
            self.teacher_nll,
            self.match_tokens,
            100.0 * self.greedy_match
        );
        md.push_str(&samples_table(&self.samples));
        md
    }
}

/// The samples as a Markdown table, each text on one line.
pub fn samples_table(samples: &[Sample]) -> String {
    let cell = |s: &str| s.trim().replace('|', "\\|").replace('\n', "<br>");
    let mut md = String::from("\n| prompt | teacher | student |\n|---|---|---|\n");
    for s in samples {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            cell(&s.prompt),
            cell(&s.teacher),
            cell(&s.student)
        );
    }
    md
}

/// A JSONL file of prompts, and whether its text prompts go through the chat template.
#[derive(Clone, Debug)]
pub struct PromptFile {
    pub path: std::path::PathBuf,
    pub chat: bool,
}

/// [`evaluate_answers`] for the models at two sources (a run folder answers with its exported
/// student) on the prompts of a JSONL file (`distill eval --prompts`); text prompts go
/// through the chat template under `chat`.
pub fn evaluate_prompt_file(
    student: &str,
    teacher: &str,
    prompts: &PromptFile,
    load: &distill_teacher::LoadOptions,
    o: &AnswerEvalOptions,
) -> Result<AnswerEval> {
    let read = crate::generate::read_prompts(&prompts.path)?;
    let (teacher, _) = crate::generate::load_decoder(teacher, load)?;
    let (student, _) = crate::generate::load_decoder(student, load)?;
    let inputs = crate::generate::prompt_inputs(&read, prompts.chat, None, &teacher.tokenizer)?;
    let prompts: Vec<EvalPrompt> = read
        .iter()
        .zip(inputs)
        .map(|(p, (_, ids))| EvalPrompt {
            ids,
            shown: p.shown(),
        })
        .collect();
    evaluate_answers(&teacher, &student, &prompts, o)
}

/// Judges `student` against `teacher` on `prompts`; they must share a tokenizer (the
/// prompts' ids are read by both).
pub fn evaluate_answers(
    teacher: &Teacher,
    student: &Teacher,
    prompts: &[EvalPrompt],
    o: &AnswerEvalOptions,
) -> Result<AnswerEval> {
    let started = Instant::now();
    let vocab = shared_vocabulary(&teacher.tokenizer, &student.tokenizer)?;
    if prompts.is_empty() {
        return Err(Error::Invalid("answer evaluation: no prompts".into()));
    }
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let greedy = |m: &Teacher, seed: u64, temperature: f64| -> Result<Vec<Generation>> {
        let opts = GenerateOptions {
            max_new_tokens: o.max_new_tokens,
            sampling: Sampling {
                temperature,
                seed,
                ..Sampling::default()
            },
            stop_ids: crate::generate::stop_ids(&m.tokenizer),
        };
        let spec = m.source.to_string();
        Ok(crate::generate::run_decoder(&m.model, &spec, &ids, &opts, &mut |_, _| false)?.0)
    };
    tracing::info!(
        prompts = prompts.len(),
        "answers: the teacher's and the student's greedy answers, the student's sampled ones"
    );
    let teacher_greedy = greedy(teacher, 0, 0.0)?;
    let student_greedy = greedy(student, 0, 0.0)?;
    let student_sampled = greedy(student, o.seed, 1.0)?;
    tracing::info!("answers: grading them with the teacher");
    let grader = Grader {
        teacher,
        prompts: &ids,
        vocab,
        batch: o.batch.max(1),
    };
    let (reverse_kl, sampled_tokens) = grader.reverse_kl(student, &student_sampled)?;
    let (nll, greedy_tokens) = grader.teacher_nll(&student_greedy)?;
    let (nll_own, _) = grader.teacher_nll(&teacher_greedy)?;
    let same = teacher_greedy
        .iter()
        .zip(&student_greedy)
        .filter(|(t, s)| leading(&t.tokens, o.match_tokens) == leading(&s.tokens, o.match_tokens))
        .count();
    let text = |m: &Teacher, g: &Generation| m.tokenizer.decode(&g.tokens);
    let samples = prompts
        .iter()
        .zip(teacher_greedy.iter().zip(&student_greedy))
        .take(o.samples)
        .map(|(p, (t, s))| {
            Ok(Sample {
                prompt: p.shown.clone(),
                teacher: text(teacher, t)?,
                student: text(student, s)?,
            })
        })
        .collect::<Result<_>>()?;
    let cut = |g: &[Generation]| g.iter().filter(|g| g.finish == Finish::Budget).count();
    Ok(AnswerEval {
        prompts: prompts.len(),
        reverse_kl,
        teacher_nll: nll,
        teacher_nll_of_teacher: nll_own,
        greedy_match: same as f64 / prompts.len() as f64,
        match_tokens: o.match_tokens,
        max_new_tokens: o.max_new_tokens,
        sampled_tokens,
        greedy_tokens,
        teacher_cut: cut(&teacher_greedy),
        student_cut: cut(&student_greedy),
        samples,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The first `n` tokens of `tokens` (all of them when fewer).
fn leading(tokens: &[u32], n: usize) -> &[u32] {
    &tokens[..tokens.len().min(n)]
}

/// The ids both models read alike: their tokenizers must be one (the same pieces); the
/// columns compared are the tokenizer's, which a padded head may exceed.
fn shared_vocabulary(teacher: &LoadedTokenizer, student: &LoadedTokenizer) -> Result<usize> {
    let (t, s) = (teacher.id_pieces(), student.id_pieces());
    if t != s {
        return Err(Error::Invalid(format!(
            "answer evaluation compares the two models token by token: their tokenizers differ ({} and {} ids{})",
            t.len(),
            s.len(),
            t.iter()
                .zip(&s)
                .position(|(a, b)| a != b)
                .map_or(String::new(), |i| format!(", first at id {i}"))
        )));
    }
    Ok(t.len())
}

/// One sequence to grade: the prompt and an answer, and the positions whose next-token
/// distributions are graded (each answer token's, and the one that ended it with EOS).
#[derive(Clone)]
struct Graded {
    ids: Vec<u32>,
    first: usize,
    count: usize,
}

fn graded(prompt: &[u32], g: &Generation, with_end: bool) -> Graded {
    let mut ids = prompt.to_vec();
    ids.extend(&g.tokens);
    let end = usize::from(with_end && g.finish == Finish::Eos);
    Graded {
        first: prompt.len() - 1,
        count: g.tokens.len() + end,
        ids,
    }
}

/// Log-probabilities `[count, vocab]` of `m` at a graded sequence's positions, for each
/// sequence of `batch`.
fn log_probs(m: &Teacher, batch: &[Graded], vocab: usize) -> Result<Vec<Tensor>> {
    let seqs: Vec<Vec<u32>> = batch.iter().map(|g| g.ids.clone()).collect();
    let logits = m.logits(&seqs)?;
    batch
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let rows = logits
                .get(i)?
                .narrow(0, g.first, g.count)?
                .narrow(1, 0, vocab)?
                .to_dtype(DType::F32)?;
            Ok(candle_nn::ops::log_softmax(&rows, D::Minus1)?)
        })
        .collect()
}

/// The teacher grading answers to `prompts`, over the first `vocab` ids, `batch` sequences
/// per forward pass.
struct Grader<'a> {
    teacher: &'a Teacher,
    prompts: &'a [Vec<u32>],
    vocab: usize,
    batch: usize,
}

impl Grader<'_> {
    /// Mean KL(student ‖ teacher) per graded position of the student's sampled answers, and
    /// the positions graded.
    fn reverse_kl(&self, student: &Teacher, answers: &[Generation]) -> Result<(f64, usize)> {
        let seqs: Vec<Graded> = self
            .prompts
            .iter()
            .zip(answers)
            .map(|(p, g)| graded(p, g, true))
            .filter(|g| g.count > 0)
            .collect();
        let (mut sum, mut n) = (0.0f64, 0usize);
        for chunk in seqs.chunks(self.batch) {
            let t = log_probs(self.teacher, chunk, self.vocab)?;
            let s = log_probs(student, chunk, self.vocab)?;
            for (lt, ls) in t.iter().zip(&s) {
                let kl = (ls.exp()? * (ls - lt)?)?.sum_all()?.to_scalar::<f32>()?;
                sum += f64::from(kl);
                n += ls.dim(0)?;
            }
        }
        Ok((sum / n.max(1) as f64, n))
    }

    /// The teacher's mean negative log-likelihood per token of `answers`, and the tokens
    /// scored.
    fn teacher_nll(&self, answers: &[Generation]) -> Result<(f64, usize)> {
        let vocab = self.vocab;
        let seqs: Vec<(Graded, &[u32])> = self
            .prompts
            .iter()
            .zip(answers)
            .map(|(p, g)| (graded(p, g, false), g.tokens.as_slice()))
            .filter(|(g, _)| g.count > 0)
            .collect();
        if let Some(&bad) = seqs
            .iter()
            .flat_map(|s| s.1)
            .find(|&&t| t as usize >= vocab)
        {
            return Err(Error::Invalid(format!(
                "answer evaluation: an answer holds id {bad}, outside the tokenizer's {vocab}"
            )));
        }
        let (mut sum, mut n) = (0.0f64, 0usize);
        for chunk in seqs.chunks(self.batch) {
            let graded: Vec<Graded> = chunk.iter().map(|(g, _)| g.clone()).collect();
            for (lp, (_, tokens)) in log_probs(self.teacher, &graded, vocab)?.iter().zip(chunk) {
                let index = Tensor::new(*tokens, lp.device())?.unsqueeze(1)?;
                let picked = lp.gather(&index, 1)?.sum_all()?.to_scalar::<f32>()?;
                sum -= f64::from(picked);
                n += tokens.len();
            }
        }
        Ok((sum / n.max(1) as f64, n))
    }
}

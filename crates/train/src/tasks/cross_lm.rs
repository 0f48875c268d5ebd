//! The causal-LM task across tokenizers (`distill.vocab: cross`): the student trains on its
//! own blocks (cross-entropy at every position), and at the positions where the teacher's
//! tokenisation of the same bytes ends a token at the same byte, on the teacher's next-token
//! distribution through the cross loss ([`cross_vocab_loss`]). Evaluation adds the KL over the
//! shared ids, the ULD term and top-1 agreement at the aligned positions, and the teacher's
//! perplexity and bits per byte over its own tokens.

use candle_core::{DType, Device, Tensor, D};
use distill_cache::{top_k_row, TeacherCache, TopK, TopKRow};
use distill_models::{Input, Model};
use rayon::prelude::*;

use crate::config::CrossConfig;
use crate::data::{CrossSet, CrossVocab};
use crate::error::{Ctx, TrainError};
use crate::losses::{cross_targets, cross_vocab_loss, CrossTargets, CrossValue};

/// Teacher rows multiplied through its head at a time (a 262,144-row head gives 64 MiB).
const HEAD_CHUNK: usize = 64;

/// What a cross-tokenizer task adds to a causal-LM one.
#[derive(Clone, Copy)]
pub struct CrossSetup<'a> {
    pub vocab: &'a CrossVocab,
    pub train: &'a CrossSet,
    pub valid: &'a CrossSet,
}

/// The teacher's side of one evaluation batch, computed once (it is frozen).
struct ValidBatch {
    targets: CrossTargets,
    /// Flat student rows (`block·s + position`) of the aligned positions.
    student_rows: Vec<u32>,
}

/// Where the teacher's rows come from: the teacher run on its own tokens of each block, or a
/// cache of its top-k at the aligned positions (`distill cache-teacher` of a cross run).
#[derive(Clone, Copy)]
pub(super) enum TeacherRows<'a> {
    Online(&'a dyn Model),
    Cached(&'a TeacherCache),
}

/// The state of a cross-tokenizer task.
pub(super) struct Cross<'a> {
    pub(super) setup: CrossSetup<'a>,
    cfg: CrossConfig,
    /// `[Vs]`: 1 at student ids no teacher id spells.
    student_unmatched: Tensor,
    valid_batches: Option<Vec<ValidBatch>>,
    /// The teacher's NLL over its own next tokens of the evaluated blocks, the tokens and the
    /// bytes they spell.
    teacher_val: Option<(f64, usize, u64)>,
}

/// A teacher batch: the teacher sequences of `blocks` padded to one length, and the flat rows
/// (`block·L + position`) of the aligned pairs, with the student's (`block·s + position`).
struct TeacherBatch {
    ids: Tensor,
    len: usize,
    teacher_rows: Vec<u32>,
    student_rows: Vec<u32>,
}

impl<'a> Cross<'a> {
    pub(super) fn new(
        setup: CrossSetup<'a>,
        cfg: &CrossConfig,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let mask: Vec<f32> = setup
            .vocab
            .student_matched
            .iter()
            .map(|&m| if m { 0.0 } else { 1.0 })
            .collect();
        Ok(Self {
            setup,
            cfg: cfg.clone(),
            student_unmatched: Tensor::new(mask, device).ctx(|| "cross vocabulary".into())?,
            valid_batches: None,
            teacher_val: None,
        })
    }

    /// The teacher's perplexity and bits per byte over its own tokens of the evaluated blocks.
    pub(super) fn teacher_val(&self) -> Option<(f64, f64)> {
        self.teacher_val.map(|(nll, tokens, bytes)| {
            (
                (nll / tokens.max(1) as f64).exp(),
                nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
            )
        })
    }

    fn teacher_batch(
        &self,
        set: &CrossSet,
        blocks: &[usize],
        s: usize,
        device: &Device,
    ) -> Result<TeacherBatch, TrainError> {
        let padded = set.padded(blocks, self.setup.vocab.teacher_pad);
        let len = padded.len;
        let (student_rows, teacher_rows) = padded
            .pairs
            .iter()
            .map(|&(bi, sp, tp)| ((bi * s) as u32 + sp, (bi * len) as u32 + tp))
            .unzip();
        let ids = Tensor::from_vec(padded.ids, (blocks.len(), len), device)
            .ctx(|| "teacher batch".into())?;
        Ok(TeacherBatch {
            ids,
            len,
            teacher_rows,
            student_rows,
        })
    }

    /// The cross loss of the student's logits `[b, s, Vs]` on `blocks` of the training set, at
    /// the training temperature; `None` when no position of the batch is aligned.
    pub(super) fn train_loss(
        &self,
        teacher: TeacherRows,
        student_logits: &Tensor,
        blocks: &[usize],
        temperature: f64,
    ) -> Result<Option<CrossValue>, TrainError> {
        let (_, s, _) = student_logits.dims3().ctx(|| "student logits".into())?;
        let device = student_logits.device();
        let batch = self.teacher_batch(self.setup.train, blocks, s, device)?;
        if batch.student_rows.is_empty() {
            return Ok(None);
        }
        let (rows, k) = match teacher {
            TeacherRows::Online(t) => (
                teacher_rows(
                    t,
                    &batch,
                    &batch.teacher_rows,
                    None,
                    self.cfg.top_k,
                    temperature,
                )?,
                self.cfg.top_k,
            ),
            TeacherRows::Cached(c) => cached_rows(c, "train", blocks, self.setup.train, s)?,
        };
        let targets = cross_targets(&rows, k, self.setup.vocab);
        let student = aligned_student(student_logits, &batch.student_rows)?;
        Ok(Some(
            cross_vocab_loss(
                &student,
                &targets,
                &self.student_unmatched,
                temperature,
                &self.cfg,
            )
            .ctx(|| "cross-tokenizer loss".into())?,
        ))
    }

    /// Fills the teacher's side of evaluation batches `batches` from a cache, once: its
    /// targets at the aligned positions (at the cache's temperature). The teacher's own
    /// perplexity needs every one of its positions, which a cache of the aligned ones lacks.
    pub(super) fn fill_valid_cached(
        &mut self,
        cache: &TeacherCache,
        batches: &[Vec<usize>],
        s: usize,
        device: &Device,
    ) -> Result<(), TrainError> {
        if self.valid_batches.is_some() {
            return Ok(());
        }
        let mut out = vec![];
        for blocks in batches {
            let batch = self.teacher_batch(self.setup.valid, blocks, s, device)?;
            let (rows, k) = cached_rows(cache, "valid", blocks, self.setup.valid, s)?;
            out.push(ValidBatch {
                targets: cross_targets(&rows, k, self.setup.vocab),
                student_rows: batch.student_rows,
            });
        }
        self.valid_batches = Some(out);
        Ok(())
    }

    /// Fills the teacher's side of evaluation batches `batches` (block indices) of the
    /// validation set, once: targets at T = 1 at the aligned positions, and the teacher's NLL
    /// of each of its next tokens.
    pub(super) fn fill_valid(
        &mut self,
        teacher: &dyn Model,
        batches: &[Vec<usize>],
        s: usize,
        device: &Device,
    ) -> Result<(), TrainError> {
        if self.valid_batches.is_some() {
            return Ok(());
        }
        let (mut out, mut nll, mut tokens, mut bytes) = (vec![], 0f64, 0usize, 0u64);
        for blocks in batches {
            let batch = self.teacher_batch(self.setup.valid, blocks, s, device)?;
            // Every position with a next teacher token, for the teacher's own NLL.
            let mut rows = vec![];
            let mut labels = vec![];
            for (bi, &i) in blocks.iter().enumerate() {
                let ids = &self.setup.valid.blocks[i].teacher_ids;
                for j in 0..ids.len().saturating_sub(1) {
                    rows.push((bi * batch.len + j) as u32);
                    labels.push(ids[j + 1]);
                    bytes += u64::from(self.setup.vocab.teacher_bytes[ids[j + 1] as usize]);
                }
            }
            let all = teacher_rows(teacher, &batch, &rows, Some(&labels), self.cfg.top_k, 1.0)?;
            nll -= all.iter().map(|r| f64::from(r.label_logp)).sum::<f64>();
            tokens += all.len();
            let at: std::collections::HashMap<u32, usize> =
                rows.iter().enumerate().map(|(k, &r)| (r, k)).collect();
            let aligned: Vec<TopKRow> = batch
                .teacher_rows
                .iter()
                .map(|r| match at.get(r) {
                    Some(&k) => Ok(all[k].clone()),
                    // The last teacher position of a block: no next token of its own, still a
                    // distribution.
                    None => teacher_rows(teacher, &batch, &[*r], None, self.cfg.top_k, 1.0)
                        .map(|mut v| v.remove(0)),
                })
                .collect::<Result<_, _>>()?;
            out.push(ValidBatch {
                targets: cross_targets(&aligned, self.cfg.top_k, self.setup.vocab),
                student_rows: batch.student_rows,
            });
        }
        self.valid_batches = Some(out);
        self.teacher_val = Some((nll, tokens, bytes));
        Ok(())
    }

    /// KL over the shared ids, the ULD term and top-1 agreement of validation batch `index`
    /// (student logits `[b, s, Vs]`), as sums over its aligned positions.
    pub(super) fn valid_scores(
        &self,
        index: usize,
        student_logits: &Tensor,
    ) -> Result<AlignedScores, TrainError> {
        let batch = &self.valid_batches.as_ref().expect("filled before scoring")[index];
        let n = batch.student_rows.len();
        if n == 0 {
            return Ok(AlignedScores::default());
        }
        let student = aligned_student(student_logits, &batch.student_rows)?;
        let v = cross_vocab_loss(
            &student,
            &batch.targets,
            &self.student_unmatched,
            1.0,
            &self.cfg,
        )
        .ctx(|| "validation cross loss".into())?;
        let top: Vec<u32> = student
            .argmax(D::Minus1)
            .and_then(|t| t.to_vec1())
            .ctx(|| "argmax".into())?;
        let (mut agree, mut comparable) = (0, 0);
        for (s, t) in top.iter().zip(&batch.targets.top1) {
            if let Some(t) = t {
                comparable += 1;
                agree += usize::from(s == t);
            }
        }
        // The teacher's mass on its top-k ids that the student spells: what the KL term sees
        // one id at a time (the rest is one bucket, or the ULD term's).
        let shared_mass: f64 = batch
            .targets
            .matched
            .rest
            .iter()
            .map(|&r| 1.0 - f64::from(r))
            .sum();
        let unmatched_mass: f64 = batch
            .targets
            .unmatched_sorted
            .iter()
            .map(|&p| f64::from(p))
            .sum();
        Ok(AlignedScores {
            kl: f64::from(v.matched) * n as f64,
            uld: f64::from(v.unmatched) * n as f64,
            positions: n,
            agree,
            comparable,
            shared_mass,
            unmatched_mass,
        })
    }
}

/// Sums over the aligned positions of evaluation batches.
#[derive(Clone, Copy, Default)]
pub(super) struct AlignedScores {
    pub(super) kl: f64,
    pub(super) uld: f64,
    pub(super) positions: usize,
    /// Positions where the student's top-1 is the teacher's (of those whose teacher top-1 the
    /// student's vocabulary spells).
    pub(super) agree: usize,
    pub(super) comparable: usize,
    /// The teacher's probability on its top-k ids the student spells, and on those it does
    /// not, summed over positions.
    pub(super) shared_mass: f64,
    pub(super) unmatched_mass: f64,
}

impl AlignedScores {
    pub(super) fn add(&mut self, o: AlignedScores) {
        self.kl += o.kl;
        self.uld += o.uld;
        self.positions += o.positions;
        self.agree += o.agree;
        self.comparable += o.comparable;
        self.shared_mass += o.shared_mass;
        self.unmatched_mass += o.unmatched_mass;
    }
}

/// The cached rows of split `split` at the aligned positions of `blocks` (in pair order), and
/// their width: a cross run's cache holds, per student position with a next token, the
/// teacher's top-k where the position is aligned (and a filler where it is not, never read).
fn cached_rows(
    cache: &TeacherCache,
    split: &str,
    blocks: &[usize],
    set: &CrossSet,
    s: usize,
) -> Result<(Vec<TopKRow>, usize), TrainError> {
    let t: TopK = cache
        .rows(split, blocks)
        .map_err(|e| TrainError::Invalid(format!("teacher cache: {e}")))?;
    let k = t.k;
    let mut rows = vec![];
    for (bi, &b) in blocks.iter().enumerate() {
        for &(sp, _) in &set.blocks[b].pairs {
            let r = bi * (s - 1) + sp as usize;
            rows.push(TopKRow {
                ids: t.ids[r * k..(r + 1) * k].to_vec(),
                logp: t.logp[r * k..(r + 1) * k].to_vec(),
                rest: t.rest[r],
                label_logp: t.label_logp[r],
                tail: vec![],
            });
        }
    }
    Ok((rows, k))
}

/// The student's logits `[b, s, Vs]` at flat rows `rows`: `[N, Vs]`.
fn aligned_student(logits: &Tensor, rows: &[u32]) -> Result<Tensor, TrainError> {
    let (b, s, v) = logits.dims3().ctx(|| "student logits".into())?;
    let idx = Tensor::new(rows, logits.device()).ctx(|| "aligned rows".into())?;
    logits
        .reshape((b * s, v))
        .and_then(|l| l.index_select(&idx, 0))
        .ctx(|| "student logits at aligned positions".into())
}

/// The teacher's top-k rows at `temperature` at flat positions `rows` of `batch` (with the
/// log-probability of `labels` at T = 1 when given): its features through its head a chunk of
/// rows at a time when it has a dense head, its logits otherwise.
fn teacher_rows(
    teacher: &dyn Model,
    batch: &TeacherBatch,
    rows: &[u32],
    labels: Option<&[u32]>,
    k: usize,
    temperature: f64,
) -> Result<Vec<TopKRow>, TrainError> {
    let device = batch.ids.device();
    let input = Input::new(&batch.ids);
    let idx = Tensor::new(rows, device).ctx(|| "teacher rows".into())?;
    let pick = |t: &Tensor| -> candle_core::Result<Tensor> {
        let (b, l, d) = t.dims3()?;
        t.reshape((b * l, d))?.index_select(&idx, 0)
    };
    let (x, head) = match (teacher.dense_head(), teacher.run_features(&input)) {
        (Some(head), Some(f)) => {
            let f = f.map_err(|e| TrainError::Invalid(format!("teacher forward: {e}")))?;
            (
                pick(&f.features.detach()).ctx(|| "teacher features".into())?,
                Some(head.detach()),
            )
        }
        _ => {
            let out = teacher
                .run(&input)
                .map_err(|e| TrainError::Invalid(format!("teacher forward: {e}")))?;
            (
                pick(&out.logits.detach()).ctx(|| "teacher logits".into())?,
                None,
            )
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for start in (0..rows.len()).step_by(HEAD_CHUNK) {
        let n = HEAD_CHUNK.min(rows.len() - start);
        let chunk = x.narrow(0, start, n).ctx(|| "teacher rows".into())?;
        let logits = match &head {
            Some(h) => distill_models::weights::times_transposed(&chunk, h),
            None => Ok(chunk),
        }
        .and_then(|l| l.to_dtype(DType::F32))
        .and_then(|l| l.to_vec2::<f32>())
        .ctx(|| "teacher logits".into())?;
        let picked: Vec<Option<TopKRow>> = logits
            .par_iter()
            .enumerate()
            .map(|(r, z)| top_k_row(z, k, temperature as f32, labels.map(|l| l[start + r])))
            .collect();
        for (r, row) in picked.into_iter().enumerate() {
            out.push(row.ok_or_else(|| {
                TrainError::Invalid(format!(
                    "teacher logits: not finite at teacher position {}",
                    rows[start + r]
                ))
            })?);
        }
    }
    Ok(out)
}

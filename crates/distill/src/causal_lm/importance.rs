//! A student cut from the teacher by what its parts do on the run's data, as Minitron
//! initialises its students: the layers that change the residual stream most (block influence,
//! ShortGPT), then heads, FFN neurons and residual channels ranked by their activations in the
//! model those layers make — the same measurement and cut as the prune step's `importance:
//! activations` (`distill_compress::passes::pruning::structured::cut_by_activations`).

use candle_core::Tensor;
use distill_compress::passes::pruning::structured::{
    cut_by_activations, least_influential_layers, Cut,
};
use distill_compress::{CalibrationTokens, Candidate, TensorMap};
use distill_models::{ArchConfig, LlamaConfig, WeightSource};
use distill_student::{derive_config, student_from_tensors, LlamaStudent, StudentConfig};
use distill_train::data::BlockSet;

use crate::error::{Context, Error, Result};

/// Training blocks the importance is measured on (the first of the split).
const CALIBRATION_BLOCKS: usize = 32;

/// The student `spec` describes, cut from the teacher (`src`, of config `teacher`) by
/// activation importance on the first training blocks; `listed`: the teacher layers to keep,
/// in order (else chosen by block influence).
pub(crate) fn cut_student(
    teacher: &LlamaConfig,
    src: &dyn WeightSource,
    spec: &StudentConfig,
    listed: Option<&[usize]>,
    train: &BlockSet,
) -> Result<LlamaStudent> {
    let derived = derive_config(teacher, spec).context("student")?;
    check_groups(teacher, &derived)?;
    let device = src.device().clone();
    let full = Candidate {
        arch: ArchConfig::Llama(teacher.clone()),
        weights: TensorMap::read(src, teacher.tensor_shapes())?,
    };
    let tokens = calibration(train, &device)?;
    let total = teacher.num_hidden_layers;
    let kept = kept_layers(&full, listed, derived.num_hidden_layers, &tokens)?;
    let drop: Vec<usize> = (0..total).filter(|l| !kept.contains(l)).collect();
    let differs = |s: usize, t: usize| (s != t).then_some(s);
    let narrow = Cut {
        drop: vec![],
        heads: differs(derived.kv_heads(), teacher.kv_heads()),
        neurons: differs(derived.intermediate_size, teacher.intermediate_size),
        hidden: differs(derived.hidden_size, teacher.hidden_size),
    };
    tracing::info!(
        layers = ?kept,
        calibration = %tokens.describe(),
        "student: cut from the teacher by activation importance"
    );
    let cut = cut_by_activations(&full, drop, &narrow, &tokens)?;
    let ArchConfig::Llama(cfg) = cut.arch else {
        unreachable!("a decoder's cut is a decoder")
    };
    let shape = |c: &LlamaConfig| {
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.kv_heads(),
            c.intermediate_size,
        )
    };
    if shape(&cfg) != shape(&derived) {
        return Err(Error::Invalid(format!(
            "student: the cut by activations made (layers, hidden, heads, kv heads, FFN) {:?}, not the {:?} the student: section asks for",
            shape(&cfg),
            shape(&derived)
        )));
    }
    student_from_tensors(cfg, cut.weights.tensors, kept, &device).context("student")
}

/// The cut keeps whole key/value groups with their query heads.
fn check_groups(teacher: &LlamaConfig, student: &LlamaConfig) -> Result<()> {
    let group = |c: &LlamaConfig| c.num_attention_heads / c.kv_heads();
    if group(student) != group(teacher) {
        return Err(Error::Invalid(format!(
            "student.heads: init importance: activations keeps whole key/value groups with their {} query heads each; the student has {} per group (set heads to {} × kv_heads, or use importance: weights)",
            group(teacher),
            group(student),
            group(teacher)
        )));
    }
    Ok(())
}

/// The first training blocks, as the calibration walk reads them.
fn calibration(train: &BlockSet, device: &candle_core::Device) -> Result<CalibrationTokens> {
    let n = CALIBRATION_BLOCKS.min(train.len());
    let ids: Vec<u32> = train.blocks[..n].iter().flatten().copied().collect();
    Ok(CalibrationTokens::Blocks(Tensor::from_vec(
        ids,
        (n, train.block_size),
        device,
    )?))
}

/// The teacher layers the student keeps, ascending: `listed` (it must be ascending, as a cut
/// keeps the order), or the `n` of highest block influence.
fn kept_layers(
    full: &Candidate,
    listed: Option<&[usize]>,
    n: usize,
    tokens: &CalibrationTokens,
) -> Result<Vec<usize>> {
    let total = full.llama()?.num_hidden_layers;
    if let Some(l) = listed {
        if l.windows(2).any(|w| w[0] >= w[1]) || l.iter().any(|&x| x >= total) {
            return Err(Error::Invalid(format!(
                "student.init.layers: with importance: activations the teacher layers are kept in their order: list distinct layers below {total} in ascending order, got {l:?}"
            )));
        }
        return Ok(l.to_vec());
    }
    if n > total {
        return Err(Error::Invalid(format!(
            "student.layers: {n} is more than the teacher's {total}; use init: random"
        )));
    }
    if n == total {
        return Ok((0..total).collect());
    }
    let (drop, note) = least_influential_layers(full, total - n, tokens)?;
    tracing::info!("student: {note}");
    Ok((0..total).filter(|l| !drop.contains(l)).collect())
}

//! The student stage: the student's shape from the teacher's config and the `student:` rules,
//! its weights from the teacher's layers (rows of a trimmed vocabulary picked out) or fresh; a
//! resumed run builds only the shape, since the checkpoint holds the weights.

use candle_core::DType;
use distill_models::WeightSource;
use distill_student::vocab::RowSelectedWeights;
use distill_student::{build_student, InitConfig, InitImportance, LlamaStudent, StudentConfig};

use super::data::RunData;
use super::prepare::Prepared;
use super::teacher::TeacherSide;
use crate::error::{Context, Error, Result};

/// Builds the run's student.
pub(crate) fn build(run: &Prepared, teacher: &TeacherSide, data: &RunData) -> Result<LlamaStudent> {
    let cfg = &run.cfg;
    let from_model = matches!(cfg.student.init, InitConfig::FromTeacher { .. }) && !run.resume;
    let dense = match (from_model, data.cross.as_ref()) {
        (false, _) => None,
        (true, None) => Some(teacher.dense_weights(DType::F32)?),
        (true, Some(cross)) => match &cross.base {
            Some(base) => Some(base.dense_weights(DType::F32).context("student.base")?),
            None => return Err(Error::Invalid(
                "student.init: from_teacher copies the teacher's embeddings, which are in another vocabulary than student.tokenizer's; name student.base (a model of the student's tokenizer to start from) or use init: {kind: random}".into(),
            )),
        },
    };
    let rows = match (data.student_rows(), &dense) {
        (Some(kept), Some(d)) => Some(RowSelectedWeights::new(
            d.as_ref(),
            kept,
            data.source_cfg().vocab_size,
            &["model.embed_tokens.weight", "lm_head.weight"],
        )?),
        _ => None,
    };
    let init_source: Option<&dyn WeightSource> = match &rows {
        Some(r) => Some(r),
        None => dense.as_deref(),
    };
    let spec = if run.resume {
        // The checkpoint holds the weights; only the shape matters here.
        StudentConfig {
            init: InitConfig::Random { seed: 0 },
            ..cfg.student.clone()
        }
    } else {
        cfg.student.clone()
    };
    let mut student = match (&spec.init, init_source) {
        (
            InitConfig::FromTeacher {
                layers,
                importance: InitImportance::Activations,
            },
            Some(src),
        ) => super::importance::cut_student(
            &data.view_cfg,
            src,
            &spec,
            layers.as_deref(),
            &data.train,
        )?,
        _ => build_student(&data.view_cfg, init_source, &spec, &run.load.device)
            .context("student")?,
    };
    if let Some(dt) = cfg.student.matmul_dtype() {
        tracing::info!(dtype = ?dt, "student: the layers multiply in {dt:?} over f32 weights");
        student.model.set_matmul_dtype(Some(dt));
    }
    if student.config.vocab_size != data.view_cfg.vocab_size {
        return Err(Error::Invalid(format!(
            "student vocabulary ({}) differs from the teacher's view of it ({}); the student's ids must be the teacher's (distill.vocab: strict), map onto them (shared) or come with their own tokenizer (cross)",
            student.config.vocab_size, data.view_cfg.vocab_size
        )));
    }
    tracing::info!(
        layers = student.config.num_hidden_layers,
        hidden = student.config.hidden_size,
        params = student.config.param_count(),
        "student"
    );
    Ok(student)
}

//! The teacher stage: the teacher loaded and run online, or only its files (tokenizer, config,
//! weights for initialisation) when its outputs come from a cache; and the teacher as the
//! student sees it, over a trimmed vocabulary when there is one.

use candle_core::DType;
use distill_models::{LlamaConfig, Model, WeightSource};
use distill_student::vocab::RestrictedModel;
use distill_teacher::{LoadedTokenizer, Teacher, TeacherFiles, TeacherSource};

use super::prepare::Prepared;
use crate::error::{Context, Result};

/// The teacher of a run.
pub(crate) enum TeacherSide {
    Online(Box<Teacher>),
    Cached(Box<TeacherFiles>),
}

impl TeacherSide {
    /// Loads the run's teacher: only its files when `teacher.cache` holds its outputs.
    pub(crate) fn load(run: &Prepared) -> Result<Self> {
        let source = TeacherSource::parse(&run.cfg.teacher.source).context("teacher.source")?;
        Ok(if run.cfg.teacher.cache.is_some() {
            tracing::info!(source = %source, "reading the teacher's files (its outputs come from the cache)");
            TeacherSide::Cached(Box::new(TeacherFiles::open(&source, &run.load)?))
        } else {
            tracing::info!(source = %source, "loading the teacher");
            TeacherSide::Online(Box::new(Teacher::load(&source, &run.load)?))
        })
    }

    pub(crate) fn source(&self) -> &TeacherSource {
        match self {
            TeacherSide::Online(t) => &t.source,
            TeacherSide::Cached(f) => &f.source,
        }
    }

    pub(crate) fn tokenizer(&self) -> &LoadedTokenizer {
        match self {
            TeacherSide::Online(t) => &t.tokenizer,
            TeacherSide::Cached(f) => &f.tokenizer,
        }
    }

    pub(crate) fn config(&self) -> Result<&LlamaConfig> {
        Ok(match self {
            TeacherSide::Online(t) => t.language_model().context("teacher.source")?.1,
            TeacherSide::Cached(f) => &f.config,
        })
    }

    /// The network, when the teacher runs online.
    pub(crate) fn model(&self) -> Result<Option<&dyn Model>> {
        Ok(match self {
            TeacherSide::Online(t) => Some(t.language_model().context("teacher.source")?.0),
            TeacherSide::Cached(_) => None,
        })
    }

    pub(crate) fn dense_weights(&self, dtype: DType) -> Result<Box<dyn WeightSource>> {
        Ok(match self {
            TeacherSide::Online(t) => t.dense_weights(dtype)?,
            TeacherSide::Cached(f) => f.dense_weights(dtype)?,
        })
    }

    pub(crate) fn bytes_on_disk(&self) -> u64 {
        match self {
            TeacherSide::Online(t) => t.bytes_on_disk(),
            TeacherSide::Cached(f) => f.bytes_on_disk(),
        }
    }

    /// The teacher as the student sees it: restricted to the `kept` ids of a trimmed
    /// vocabulary, or as it is; `None` when its outputs come from the cache.
    pub(crate) fn view(&self, kept: Option<&[u32]>) -> Result<TeacherView<'_>> {
        Ok(match (kept, self.model()?) {
            (Some(k), Some(m)) => TeacherView::Restricted(RestrictedModel::new(m, k)?),
            (_, m) => TeacherView::Whole(m),
        })
    }
}

/// The teacher network a run trains against.
pub(crate) enum TeacherView<'a> {
    Whole(Option<&'a dyn Model>),
    Restricted(RestrictedModel<'a>),
}

impl TeacherView<'_> {
    pub(crate) fn lm(&self) -> Option<&dyn Model> {
        match self {
            TeacherView::Whole(m) => *m,
            TeacherView::Restricted(r) => Some(r),
        }
    }
}

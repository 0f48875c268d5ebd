//! The framework every technique plugs into: a [`pass::Pass`] changes a candidate, a
//! [`technique::Technique`] builds passes from settings and is registered by name
//! ([`registry`]), a `compress:` section becomes [`plan::Plan`]s, each closed by a
//! [`sink::Sink`], and [`pipeline::run`] runs and measures them.

pub mod pass;
pub mod pipeline;
pub mod plan;
pub mod quality;
pub mod registry;
pub mod sink;
pub mod technique;

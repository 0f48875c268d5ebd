//! Progress of long stages: an indicatif bar on a terminal, and periodic log lines (about
//! twenty per stage, with rate and ETA) when stderr is not one — for every stage the library
//! reports (training of either task, teacher logits, evaluation of a text).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use distill::{Event, Observer};
use indicatif::{ProgressBar, ProgressStyle};

struct Stage {
    bar: ProgressBar,
    total: u64,
    unit: String,
    start: Instant,
    start_done: u64,
    next_log: u64,
}

/// The observer the binary hands the library.
#[derive(Default)]
pub struct Progress {
    stages: Mutex<HashMap<String, Stage>>,
}

fn eta(elapsed: Duration, done: u64, total: u64) -> String {
    if done == 0 || total <= done {
        return "-".into();
    }
    let secs = elapsed.as_secs_f64() / done as f64 * (total - done) as f64;
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl Progress {
    /// A line above the bar of `stage`, or a log line without a terminal.
    fn say(&self, stage: &str, msg: &str) {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        match stages.get(stage) {
            Some(s) if !s.bar.is_hidden() => s.bar.println(msg),
            _ => tracing::info!("{msg}"),
        }
    }

    /// Moves `stage` to `done`; logs a line when there is no terminal and one is due.
    fn advance(&self, stage: &str, done: u64, what: impl FnOnce() -> String) {
        let mut stages = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = stages.get_mut(stage) else {
            return;
        };
        s.bar.set_position(done);
        if s.bar.is_hidden() {
            if done >= s.next_log || done == s.total {
                let e = eta(
                    s.start.elapsed(),
                    done - s.start_done,
                    s.total - s.start_done,
                );
                tracing::info!(stage, done, of = s.total, eta = %e, "{}", what());
                s.next_log = done + (s.total / 20).max(1);
            }
        } else {
            s.bar.set_message(what());
        }
    }
}

impl Observer for Progress {
    fn event(&self, e: &Event) {
        match *e {
            Event::Started {
                stage,
                unit,
                total,
                done,
            } => {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{spinner}} {stage} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} eta {{eta}}"
                    ))
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_position(done);
                if bar.is_hidden() {
                    tracing::info!(stage, total, done, "{stage}: {total} {unit}");
                }
                self.stages
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        stage.to_string(),
                        Stage {
                            bar,
                            total,
                            unit: unit.to_string(),
                            start: Instant::now(),
                            start_done: done,
                            next_log: done + 1,
                        },
                    );
            }
            Event::Progress { stage, done } => {
                let unit = self
                    .stages
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(stage)
                    .map(|s| s.unit.clone())
                    .unwrap_or_default();
                self.advance(stage, done, || format!("{done} {unit}"));
            }
            Event::Step(r) => {
                let unit = r.throughput.keys().next().cloned().unwrap_or_default();
                let unit = unit.trim_end_matches("_per_second").to_string();
                self.advance(&r.stage, r.step as u64, || {
                    format!("loss {:.3} · {:.0} {unit}/s", r.loss, r.units_per_second())
                });
            }
            Event::Eval(r) => self.say(
                &r.stage,
                &format!("{} step {:>5}  {}", r.stage, r.step, r.summary),
            ),
            Event::Note { stage, text } => self.say(stage, text),
            Event::Finished { stage } => {
                if let Some(s) = self
                    .stages
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(stage)
                {
                    s.bar.finish_and_clear();
                }
            }
        }
    }
}

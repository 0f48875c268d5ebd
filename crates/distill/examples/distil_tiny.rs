//! Distils the real SmolLM2-135M teacher into a tiny one-layer student on Moby Dick through
//! the library API alone, watching progress through an observer, and prints the report.
//!
//!   scripts/fetch-assets.sh && cargo run --release --example distil_tiny -p distill
//!
//! Assets come from `$DISTILL_ASSETS` (default `~/.cache/distill/assets`); the run goes into
//! a temporary folder.

use distill::{parse_job, run, Event, Observer, RunOptions, RunOutcome};

/// Prints every evaluation and note; the library itself never prints.
struct Print;

impl Observer for Print {
    fn event(&self, e: &Event) {
        match e {
            Event::Eval(r) => println!("{} step {}: {}", r.stage, r.step, r.summary),
            Event::Note { text, .. } => println!("{text}"),
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let assets = std::env::var("DISTILL_ASSETS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/distill/assets",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let runs = tempfile::tempdir()?;
    let job = parse_job(&format!(
        r#"
teacher:
  source: {assets}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
  gguf_weights: dequantized
data:
  source: {{kind: folder, path: {assets}/moby-dick, pattern: "chapter_*.txt"}}
  block_size: 64
student: {{layers: 1, hidden: 192, init: {{kind: from_teacher}}}}
distill: {{loss: forward_kl, temperature: 1.0, alpha: 0.5}}
train: {{steps: 10, batch_size: 2, lr: 1.0e-3, eval_every: 5, eval_blocks: 4}}
output: {{dir: {runs}, name: tiny}}
"#,
        runs = runs.path().display()
    ))?;
    let opts = RunOptions {
        observer: &Print,
        ..RunOptions::default()
    };
    let RunOutcome::CausalLm(lm) = run(&job, &opts)? else {
        unreachable!("a causal-LM job")
    };
    let report = lm.report.ok_or("the run was interrupted")?;
    println!("\n{}", report.table());
    let first = report.student.val_ppl.ok_or("no evaluation")?;
    assert!(
        first.is_finite(),
        "the student's validation perplexity is {first}"
    );
    println!(
        "student exported to {}",
        lm.student.expect("exported").display()
    );
    Ok(())
}

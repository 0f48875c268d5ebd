//! The report of `distill auto`: `auto.md`, `auto.json` and the size-vs-quality plot of every
//! candidate it measured (`auto.svg`).

use std::fmt::Write as _;
use std::path::Path;

use distill_compress::auto::AutoOutcome;
use distill_compress::framework::pipeline::Outcome;
use distill_files::write_file;

use super::compress::{plot, table, Reference};
use crate::error::Result;

/// The verdict sentence: what was found, within what, after how many measurements.
pub fn verdict(o: &AutoOutcome) -> String {
    let within = match &o.target {
        Some(t) => format!("{} and {t}", o.budget),
        None => o.budget.clone(),
    };
    let lm = o.quality == distill_compress::framework::pipeline::Quality::Perplexity;
    let q = |v: f64| {
        if lm {
            format!("perplexity {v:.2}")
        } else {
            format!("accuracy {:.2}%", 100.0 * v)
        }
    };
    let bound = if lm {
        format!(
            "perplexity ≤ {:.2}, the uncompressed {:.2} + budget",
            o.limit, o.base_quality
        )
    } else {
        format!(
            "accuracy ≥ {:.2}%, the uncompressed {:.2}% − budget",
            100.0 * o.limit,
            100.0 * o.base_quality
        )
    };
    let quality = |r: &distill_compress::framework::pipeline::Row| q(r.quality);
    let counts = format!(
        "{} validation measurements, {} calibration screens",
        o.evaluations, o.proxy_evaluations
    );
    match &o.best {
        Some(b) if o.met => format!(
            "Within {within} ({bound}): **{}**, {:.2} MB, {} as written ({counts}).",
            b.artifact.as_deref().unwrap_or("auto"),
            b.bytes as f64 / 1e6,
            quality(b),
        ),
        Some(b) => format!(
            "Nothing measured meets {within} ({bound}); the closest is **{}**, {:.2} MB at {} ({counts}).",
            b.artifact.as_deref().unwrap_or("auto"),
            b.bytes as f64 / 1e6,
            quality(b),
        ),
        None => format!(
            "No candidate was measured within {within}: the evaluation budget ended first, or no frontier point passed the calibration screen ({counts})."
        ),
    }
}

/// Writes `auto.md`, `auto.json` and `auto.svg` into `out`.
pub fn write(o: &AutoOutcome, out: &Path, teacher: Option<&Reference>) -> Result<()> {
    let as_outcome = Outcome {
        model: o.model.clone(),
        quality: o.quality,
        rows: o.rows.clone(),
        headline: o.best.clone(),
    };
    let mut md = format!("# distill auto: {}\n\n{}\n\n", o.model, verdict(o));
    if !o.best_steps.is_empty() {
        let yaml =
            serde_yaml::to_string(&serde_json::json!([{ "name": "auto", "steps": o.best_steps }]))
                .unwrap_or_default();
        let _ = writeln!(
            md,
            "The same artifact as a `compress:` variant:\n\n```yaml\nvariants:\n{}```\n",
            yaml.lines().map(|l| format!("  {l}\n")).collect::<String>()
        );
    }
    md.push_str("## Every validation measurement\n\n");
    md.push_str(&table(&as_outcome));
    md.push_str("\n![size vs quality](auto.svg)\n");
    if !o.probes.is_empty() {
        md.push_str("\n## Proxy screen of the frontier\n\n");
        md.push_str("| base | types | tensor bytes | proxy error | calibration ppl | ratio | screened | val ppl |\n|---|---|---:|---:|---:|---:|---|---:|\n");
    }
    for p in &o.probes {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} MB | {:.4} | {:.2} | {:.3} | {} | {} |",
            p.base,
            p.types,
            p.bytes as f64 / 1e6,
            p.proxy_error,
            p.calibration_ppl,
            p.calibration_ratio,
            if p.survived { "kept" } else { "cut" },
            p.val_ppl.map(|v| format!("{v:.2}")).unwrap_or_default()
        );
    }
    let put = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = out.join(name);
        write_file(&p, bytes).map_err(crate::error::Error::from)
    };
    put("auto.md", md.as_bytes())?;
    put(
        "auto.json",
        serde_json::to_string_pretty(o)
            .expect("an outcome serialises")
            .as_bytes(),
    )?;
    plot(&as_outcome, &out.join("auto.svg"), teacher, &|r| {
        r.val_ppl().is_some()
    })
}

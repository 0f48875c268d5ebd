use super::*;

fn parse(text: &str) -> Result<RunConfig> {
    match parse_job(text)? {
        Job::CausalLm(c) => Ok(*c),
        Job::Classification(_) => Err(Error::Job(
            "a classification config, not a causal-LM one".into(),
        )),
    }
}

const MINIMAL: &str = "
teacher: {source: model.gguf}
data:
  source: {kind: folder, path: /tmp, pattern: '*.txt'}
train: {steps: 10}
output: {name: x}
";

/// The trimmed quickstart is the quickstart plus `student.vocab`: a comparison of the two
/// measures trimming alone.
#[test]
fn the_trimmed_quickstart_differs_from_the_quickstart_only_in_its_vocabulary() {
    let read = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs")
            .join(name);
        parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let full = read("quickstart.yaml");
    let mut trimmed = read("quickstart-trimmed.yaml");
    assert!(full.student.vocab.is_none());
    let v = trimmed.student.vocab.take().expect("student.vocab");
    assert_eq!((v.min_count, v.keep.len()), (1, 0));
    assert_eq!(trimmed.output.name, "quickstart-trimmed");
    trimmed.output.name = full.output.name.clone();
    assert_eq!(trimmed, full);
}

#[test]
fn classification_refuses_a_trimmed_vocabulary() {
    let e = parse_job(
        "task: classification
teacher: {source: minilm}
data:
  source: {kind: class_folders, path: /tmp, classes: {a: x, b: y}}
  labels: [x, y]
student: {layers: 2, vocab: {trim: corpus}}
train: {steps: 10, lr: 1.0e-4}
output: {name: x}
",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("student.vocab") && e.contains("causal-LM"),
        "{e}"
    );
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.train.batch_size, 8);
    assert_eq!(c.distill.loss, distill_train::losses::SoftLoss::ForwardKl);
    assert_eq!(c.data.block_size, 128);
    assert_eq!(
        c.teacher.gguf_weights,
        distill_teacher::GgufCompute::Dequantized
    );
    assert_eq!(c.run_dir(), PathBuf::from("runs/x"));
    // The resolved config round-trips.
    let again: RunConfig = serde_yaml::from_str(&serde_yaml::to_string(&c).unwrap()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn unknown_keys_wrong_types_and_ranges_are_named() {
    let e = format!(
        "{:#}",
        parse(&MINIMAL.replace("steps: 10", "steps: 10, stepz: 3")).unwrap_err()
    );
    assert!(e.contains("stepz") && e.contains("line"), "{e}");
    let e = format!(
        "{:#}",
        parse(&MINIMAL.replace("steps: 10", "steps: ten")).unwrap_err()
    );
    assert!(e.contains("steps") || e.contains("invalid type"), "{e}");
    let e = format!(
        "{:#}",
        parse(&MINIMAL.replace("steps: 10", "steps: 0")).unwrap_err()
    );
    assert!(e.contains("train.steps"), "{e}");
    let e = format!(
        "{:#}",
        parse(&MINIMAL.replace("steps: 10", "steps: -3")).unwrap_err()
    );
    assert!(e.contains("steps") || e.contains("invalid value"), "{e}");
    let e = format!(
        "{:#}",
        parse(&format!("{MINIMAL}distill: {{alpha: 1.5}}\n")).unwrap_err()
    );
    assert!(e.contains("distill.alpha"), "{e}");
    let e = format!(
        "{:#}",
        parse(&format!("{MINIMAL}distill: {{temperature: 0}}\n")).unwrap_err()
    );
    assert!(e.contains("distill.temperature"), "{e}");
    let e = format!(
        "{:#}",
        parse(&MINIMAL.replace("steps: 10", "steps: 10, batch_size: 0")).unwrap_err()
    );
    assert!(e.contains("train.batch_size"), "{e}");
    let e = format!(
        "{:#}",
        parse(&format!("{MINIMAL}student: {{layer: 3}}\n")).unwrap_err()
    );
    assert!(e.contains("layer"), "{e}");
}

#[test]
fn matmul_dtype_and_batch_size_auto_are_checked() {
    let c = parse(&format!("{MINIMAL}student: {{matmul_dtype: bf16}}\n")).unwrap();
    assert_eq!(c.student.matmul_dtype(), Some(candle_core::DType::BF16));
    let e = parse(&format!("{MINIMAL}student: {{matmul_dtype: f16}}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("student.matmul_dtype") && e.contains("f16"),
        "{e}"
    );
    let auto = MINIMAL.replace("steps: 10", "steps: 10, batch_size: auto");
    assert!(parse(&auto).unwrap().train.batch_auto);
    let e = parse(&auto.replace(
        "teacher: {source: model.gguf}",
        "teacher: {source: model.gguf, cache: /tmp/c}",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("train.batch_size") && e.contains("teacher.cache"),
        "{e}"
    );
}

#[test]
fn both_tasks_share_the_training_keys() {
    // The classification spelling of the clip works in a causal-LM run, and the old
    // causal-LM spelling still parses.
    let c = parse(&MINIMAL.replace("steps: 10", "steps: 10, max_grad_norm: 0.5")).unwrap();
    assert_eq!(c.train.max_grad_norm, 0.5);
    let c = parse(&MINIMAL.replace("steps: 10", "steps: 10, clip_grad_norm: 0.25")).unwrap();
    assert_eq!(c.train.max_grad_norm, 0.25);
    let e = parse(&MINIMAL.replace("steps: 10", "steps: 10, dropout: 0.1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.dropout"), "{e}");
    let e = parse(&format!("{MINIMAL}distill: {{scratch_baseline: true}}\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("distill.scratch_baseline"), "{e}");
}

//! The binary never destroys what it did not write, stops cleanly on any stop signal, lets one
//! run write a folder at a time, reads no more of an input than it needs, survives a closed or
//! full stdout, and names damaged weights (`docs/reliability.md` lists each class with its
//! test here).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tiny::{tiny_llama, tiny_llama_config, write_tiny_llama_folder, write_tiny_llama_gguf};

fn distill_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.args(args);
    for k in ["HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "RUST_LOG"] {
        c.env_remove(k);
    }
    c
}

fn distill(args: &[&str]) -> Output {
    distill_cmd(args).output().expect("run distill")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "distill failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A failure that says `needle` and never panics.
fn refused(o: &Output, needle: &str) -> String {
    let e = stderr(o);
    assert!(!o.status.success(), "expected a refusal: {e}");
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
    assert!(!e.contains("panicked"), "{e}");
    e
}

/// The sorted names in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn tiny_folder(dir: &Path) -> PathBuf {
    let cfg = tiny_llama_config();
    let model = dir.join("model");
    write_tiny_llama_folder(&model, &cfg, &tiny_llama(&cfg));
    model
}

/// A tiny teacher, documents and a run config of `steps` steps at `root`.
fn run_setup(root: &Path, steps: usize) -> PathBuf {
    let teacher = tiny_folder(root);
    let data = root.join("docs");
    common::tiny::write_tiny_documents(&data);
    let yaml = format!(
        "teacher: {{source: {teacher}}}
data:
  source: {{kind: folder, path: {data}, pattern: '*.txt'}}
  block_size: 32
  validation_fraction: 0.34
student: {{layers: 1, init: {{kind: from_teacher}}}}
distill: {{alpha: 0.8, temperature: 2.0}}
train: {{steps: {steps}, batch_size: 2, lr: 0.001, eval_every: 10, eval_blocks: 2, checkpoint_every: 10, seed: 3}}
output: {{dir: {runs}, name: tiny}}
",
        teacher = teacher.display(),
        data = data.display(),
        runs = root.join("runs").display(),
    );
    let path = root.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Lines of `metrics.jsonl` under the run folder.
fn metric_lines(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Starts `distill run CONFIG` and waits until it has trained `lines` metric lines.
fn start_run(config: &Path, run: &Path, lines: usize) -> Child {
    let child = distill_cmd(&["run", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while metric_lines(run) < lines {
        assert!(start.elapsed().as_secs() < 120, "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn signal(child: &Child, sig: &str) {
    Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
}

fn weights(run: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(
        run.join("final/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

#[test]
fn compress_out_keeps_a_users_files_and_refuses_the_working_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_folder(tmp.path());
    let m = model.to_str().unwrap();
    let out = tmp.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("thesis.tex"), "years of work").unwrap();
    let o = distill(&[
        "compress",
        m,
        "--drop-layers",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    refused(&o, "--overwrite");
    assert_eq!(names(&out), vec!["thesis.tex"]);

    // Allowed into it: distill's files arrive, the user's file stays.
    let o = distill(&[
        "compress",
        m,
        "--drop-layers",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--overwrite",
    ]);
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("thesis.tex")).unwrap(),
        "years of work"
    );
    assert!(out.join("model.safetensors").is_file() && out.join(".distill").is_file());
    // Distill's own folder is written again without a flag, the user's file still there.
    ok(&distill(&[
        "compress",
        m,
        "--drop-layers",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(out.join("thesis.tex").is_file());

    // `.` and the folders above an input: refused, nothing touched.
    let cwd = tmp.path().join("work");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::write(cwd.join("notes.txt"), "x").unwrap();
    for target in [".", "..", "/"] {
        let o = distill_cmd(&[
            "compress",
            m,
            "--drop-layers",
            "1",
            "--out",
            target,
            "--overwrite",
        ])
        .current_dir(&cwd)
        .output()
        .unwrap();
        refused(&o, "never writes an output folder there");
    }
    let o = distill(&[
        "compress",
        m,
        "--drop-layers",
        "1",
        "--out",
        tmp.path().to_str().unwrap(),
        "--overwrite",
    ]);
    refused(&o, "an input of this command");
    assert_eq!(names(&cwd), vec!["notes.txt"]);
    assert!(model.join("model.safetensors").is_file());
    // A file given as the output folder.
    let o = distill(&[
        "compress",
        m,
        "--out",
        cwd.join("notes.txt").to_str().unwrap(),
    ]);
    refused(&o, "regular file");
    assert_eq!(std::fs::read_to_string(cwd.join("notes.txt")).unwrap(), "x");
}

#[test]
fn outputs_are_only_regular_files_and_leave_no_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_folder(tmp.path());
    let m = model.to_str().unwrap();
    let spot = tmp.path().join("spot");
    std::fs::create_dir(&spot).unwrap();
    let fifo = spot.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let is_fifo = |p: &Path| {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(p).unwrap().file_type().is_fifo()
    };
    let o = distill(&["compress", m, "--gguf", fifo.to_str().unwrap()]);
    refused(&o, "is a FIFO");
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "Call me Ishmael. ".repeat(20)).unwrap();
    let save_logits = |to: &Path| {
        distill(&[
            "eval",
            m,
            "--text",
            text.to_str().unwrap(),
            "--save-logits",
            to.to_str().unwrap(),
        ])
    };
    refused(&save_logits(&fifo), "is a FIFO");
    assert!(is_fifo(&fifo), "the FIFO is intact");
    // A folder as a file output; a file output in a folder that does not exist.
    let o = distill(&["compress", m, "--gguf", spot.to_str().unwrap()]);
    refused(&o, "is a folder");
    refused(&save_logits(&spot), "is a folder");
    let o = distill(&[
        "compress",
        m,
        "--gguf",
        spot.join("no/such/x.gguf").to_str().unwrap(),
    ]);
    refused(&o, "does not exist");

    // A device node (made here, never a real one): refused and left as it is.
    let node = spot.join("full");
    let made = Command::new("mknod")
        .args([node.to_str().unwrap(), "c", "1", "7"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let o = distill(&["compress", m, "--gguf", node.to_str().unwrap()]);
        refused(&o, "is a character device");
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&node)
            .unwrap()
            .file_type()
            .is_char_device());
    } else {
        eprintln!("skipped the device node: this user cannot run mknod (run as root to check it)");
    }
    let mut expected = vec!["fifo".to_string()];
    if made {
        expected.insert(1, "full".into());
    }
    assert_eq!(names(&spot), expected, "no temporary files left");

    // A real export works and leaves only the file.
    let good = spot.join("tiny.gguf");
    ok(&distill(&[
        "compress",
        m,
        "--gguf",
        good.to_str().unwrap(),
        "--quantize",
        "f32",
    ]));
    assert!(good.is_file());
    assert_eq!(names(&spot).len(), expected.len() + 1, "{:?}", names(&spot));
}

/// SIGTERM (what `timeout`, Slurm and systemd send) checkpoints like Ctrl-C, exits 143, and
/// `--resume` reaches the weights of the run that was never stopped.
#[test]
fn sigterm_checkpoints_and_resume_reaches_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let config = run_setup(tmp.path(), 400);
    let c = config.to_str().unwrap();
    let runs = tmp.path().join("runs");
    ok(&distill(&["run", c]));
    std::fs::rename(runs.join("tiny"), runs.join("whole")).unwrap();

    let child = start_run(&config, &runs.join("tiny"), 3);
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("SIGTERM: finishing the current step"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout.contains("interrupted at step") && stdout.contains("--resume"),
        "{stdout}"
    );
    let stopped_at = metric_lines(&runs.join("tiny"));
    assert!(!runs.join("tiny/final").exists());

    let out = ok(&distill(&["run", c, "--resume"]));
    assert!(out.contains("report:"), "{out}");
    assert!(metric_lines(&runs.join("tiny")) > stopped_at);
    let (whole, resumed) = (weights(&runs.join("whole")), weights(&runs.join("tiny")));
    assert_eq!(whole.len(), resumed.len());
    for (name, t) in &whole {
        let d = common::max_abs_diff(t, &resumed[name]);
        assert!(d == 0.0, "{name}: the resumed run differs by {d}");
    }
}

#[test]
fn one_run_writes_a_folder_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let config = run_setup(tmp.path(), 1_000_000);
    let c = config.to_str().unwrap();
    let run = tmp.path().join("runs/tiny");
    // Past its first checkpoint (every 10 steps).
    let mut first = start_run(&config, &run, 25);
    while !run.join("checkpoints/latest").exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = format!("pid {}", first.id());
    for flag in ["--overwrite", "--resume"] {
        let e = refused(&distill(&["run", c, flag]), "is in use by");
        assert!(e.contains(&pid) && e.contains("distill run"), "{e}");
    }
    assert!(
        run.join("config.yaml").is_file(),
        "the first run's folder is intact"
    );
    assert!(metric_lines(&run) >= 3);

    // Killed without a chance to clean up: its lock is taken over by the next run.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(run.join(".distill.lock").exists(), "a stale lock file");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let step: usize = latest.trim().trim_start_matches("step-").parse().unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("steps: 1000000", &format!("steps: {}", step + 2)),
    )
    .unwrap();
    let o = distill(&["run", c, "--resume"]);
    ok(&o);
    assert!(
        stderr(&o).contains("taking over the lock"),
        "{}",
        stderr(&o)
    );
    assert!(!run.join(".distill.lock").exists(), "released at the end");
}

#[test]
fn a_run_that_fails_before_training_leaves_nothing_in_the_way() {
    let tmp = tempfile::tempdir().unwrap();
    let config = run_setup(tmp.path(), 2);
    let c = config.to_str().unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("block_size: 32", "block_size: 100000"),
    )
    .unwrap();
    refused(&distill(&["run", c]), "do not fill one block");
    assert!(
        !tmp.path().join("runs/tiny").exists(),
        "no folder left behind"
    );
    std::fs::write(&config, text).unwrap();
    let out = ok(&distill(&["run", c]));
    assert!(out.contains("report:"), "{out}");
    let e = refused(&distill(&["run", c]), "--resume");
    assert!(e.contains("--overwrite"), "{e}");
    // --overwrite removes what the run wrote and nothing else.
    let run = tmp.path().join("runs/tiny");
    std::fs::write(run.join("my-notes.md"), "mine").unwrap();
    ok(&distill(&["run", c, "--overwrite"]));
    assert_eq!(
        std::fs::read_to_string(run.join("my-notes.md")).unwrap(),
        "mine"
    );
}

/// A 40 MB text read under a 3 GiB address-space limit with `--max-tokens 256`: only the
/// first pieces are read (the whole text once took 6.3 GB). Streams that never end are
/// refused at once, as data, as a config and as a text.
#[test]
fn inputs_are_read_only_as_far_as_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_folder(tmp.path());
    let big = tmp.path().join("big.txt");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let line = "Call me Ishmael. Some years ago, never mind how long precisely.\n";
        for _ in 0..(40 << 20) / line.len() {
            f.write_all(line.as_bytes()).unwrap();
        }
    }
    let mut cmd = distill_cmd(&[
        "eval",
        model.to_str().unwrap(),
        "--text",
        big.to_str().unwrap(),
        "--max-tokens",
        "256",
        "--block",
        "64",
        "--json",
    ]);
    limit_address_space(&mut cmd, 3 << 30);
    let start = Instant::now();
    let o = cmd.output().unwrap();
    let out = ok(&o);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"], 256, "{out}");
    assert!(start.elapsed().as_secs() < 60);

    for (args, what) in [
        (
            vec!["eval", model.to_str().unwrap(), "--text", "/dev/zero"],
            "character device",
        ),
        (vec!["run", "/dev/zero"], "character device"),
        (
            vec!["eval", model.to_str().unwrap(), "--text", "/"],
            "a folder",
        ),
    ] {
        let start = Instant::now();
        refused(&distill(&args), what);
        assert!(start.elapsed().as_secs() < 30, "{args:?}");
    }
    let config = run_setup(tmp.path(), 2);
    let text = std::fs::read_to_string(&config).unwrap();
    let data = tmp.path().join("docs");
    std::fs::write(
        &config,
        text.replace(
            &format!(
                "{{kind: folder, path: {}, pattern: '*.txt'}}",
                data.display()
            ),
            "{kind: text, paths: [/dev/zero]}",
        ),
    )
    .unwrap();
    refused(
        &distill(&["run", config.to_str().unwrap()]),
        "character device",
    );
}

/// Sets RLIMIT_AS for the child: beyond it allocations fail instead of growing.
fn limit_address_space(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            let l = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_closed_or_full_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_folder(tmp.path());
    // About 30,000 lines: far more than a pipe holds.
    let text = "Call me Ishmael. ".repeat(2000);
    let mut child = distill_cmd(&["tokenize", model.to_str().unwrap(), &text])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
    } // the reader is gone, as `| head -n1` leaves it
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(141), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    if Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = distill_cmd(&["schema"]).stdout(full).output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(
            e.contains("writing to standard output") && e.contains("No space left"),
            "{e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
}

#[test]
fn nan_or_inf_in_weights_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_llama_config();
    let vm = tiny_llama(&cfg);
    {
        let data = vm.data().lock().unwrap();
        let v = &data["model.layers.1.mlp.up_proj.weight"];
        let mut w = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        w[7] = f32::NAN;
        let t = candle_core::Tensor::from_vec(w, v.as_tensor().dims(), &candle_core::Device::Cpu)
            .unwrap();
        v.set(&t).unwrap();
    }
    let folder = tmp.path().join("damaged");
    write_tiny_llama_folder(&folder, &cfg, &vm);
    let gguf = tmp.path().join("damaged.gguf");
    write_tiny_llama_gguf(
        &gguf,
        &cfg,
        &vm,
        candle_core::quantized::GgmlDType::F32,
        true,
    );
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "Call me Ishmael. ".repeat(20)).unwrap();
    for (source, name) in [
        (
            folder.to_str().unwrap(),
            "model.layers.1.mlp.up_proj.weight",
        ),
        (gguf.to_str().unwrap(), "blk.1.ffn_up.weight"),
    ] {
        let o = distill(&[
            "eval",
            source,
            "--text",
            text.to_str().unwrap(),
            "--block",
            "64",
        ]);
        let e = refused(&o, name);
        assert!(e.contains("NaN or infinite"), "{e}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("perplexity"), "measured all the same: {out}");
    }
    // As a teacher: an error naming the tensor, before any work.
    let config = run_setup(tmp.path(), 2);
    let t = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        t.replace(
            &tmp.path().join("model").display().to_string(),
            folder.to_str().unwrap(),
        ),
    )
    .unwrap();
    let e = refused(
        &distill(&["run", config.to_str().unwrap()]),
        "model.layers.1.mlp.up_proj.weight",
    );
    assert!(e.contains("damaged"), "{e}");
    assert!(!tmp.path().join("runs/tiny").exists());
}

"""Orchestrates scripts/bench-vs-torch/run.sh: distill against PyTorch and llama.cpp, side by side,
in one run, on one machine, at one thread count. Standard library only; each side runs in its own
process (distill's binary, the torch venv, the llama.cpp venv), alternated round by round so that
drift in the machine's speed falls on both sides alike.

Cases:
  quickstart  the quickstart step: SmolLM2-135M teacher (30 layers) dequantised, 6-layer student,
              batch 4 x 128, forward KL at T = 1 with alpha 0.5, clipping, AdamW
  small       4-layer d = 256 student of a 6-layer d = 384 teacher, vocab 8,192, batch 8 x 128
  teacher     the quickstart teacher's forward alone at batch 4 x 128
  gguf        the GGUF teacher's forward over 512 tokens (logits at every position) against
              llama.cpp on the same file: distill's dequantised and ggml paths

Writes docs/results/speed.{md,json}.
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def log(msg):
    print(f"bench-vs-torch: {msg}", file=sys.stderr, flush=True)


def run(cmd, env=None, with_stderr=False):
    t = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write((r.stdout or "") + (r.stderr or ""))
        raise SystemExit(f"bench-vs-torch: failed ({r.returncode}): {' '.join(map(str, cmd))}")
    log(f"{Path(str(cmd[0])).name} {cmd[1] if len(cmd) > 1 else ''}: {time.time() - t:.1f} s")
    return (r.stdout, r.stderr) if with_stderr else r.stdout


def cpu_info():
    model, flags = "unknown", set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and model == "unknown":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]
    return model, [f for f in wanted if f in flags]


def median_phases(rows):
    keys = sorted({k for r in rows for k in r})
    return {k: statistics.median(r[k] for r in rows if k in r) for k in keys}


def ours_steps(distill, yaml_text, workdir, name, warmup, env):
    """Runs `distill run` on `yaml_text` (output name `name`); returns the measured steps as
    (step, tokens/s, phase seconds), the student's config and the run's peak RSS in bytes."""
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(yaml_text)
    # GNU time's %M: the peak resident set of the whole run, in KiB.
    _, err = run(["/usr/bin/time", "-f", "peak-rss-kib %M", distill, "run", str(cfg)], env=env, with_stderr=True)
    rss = [int(l.split()[1]) for l in err.splitlines() if l.startswith("peak-rss-kib ")]
    run_dir = workdir / "runs" / name
    rows = []
    for line in open(run_dir / "metrics.jsonl"):
        r = json.loads(line)
        if r.get("kind") == "train" and r.get("stage") == "train" and "tokens_per_second" in r:
            rows.append((r["step"], r["tokens_per_second"], r.get("seconds") or {}))
    rows.sort(key=lambda r: r[0])
    measured = rows[warmup:]
    if len(measured) < 5:
        raise SystemExit(f"bench-vs-torch: {name}: only {len(measured)} measured steps")
    return measured, json.load(open(run_dir / "final" / "config.json")), rss[-1] * 1024 if rss else None


def torch_json(torch_py, args, env):
    return json.loads(run([torch_py, str(HERE / "torch_side.py"), *map(str, args)], env=env))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--distill", required=True)
    p.add_argument("--torch-python", required=True)
    p.add_argument("--llama-python", required=True)
    p.add_argument("--assets", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="measured steps per round, after warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    p.add_argument("--cases", default="quickstart,small,teacher,gguf")
    a = p.parse_args()
    cases = a.cases.split(",")
    assets = Path(a.assets)
    gguf = assets / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    moby = assets / "moby-dick"
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    work = Path(tempfile.mkdtemp(prefix="bench-vs-torch-"))
    log(f"work folder {work}")
    model, flags = cpu_info()
    result = {"meta": {
        "script": "scripts/bench-vs-torch/run.sh",
        "date": datetime.date.today().isoformat(),
        "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip(),
        "dirty": bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True).stdout.strip()),
        "cpu": model, "cpu_features": flags, "cores": os.cpu_count(), "threads": a.threads,
        "distill": a.distill, "rounds": a.rounds, "steps_per_round": a.steps, "warmup": a.warmup,
    }, "cases": {}}
    versions = {}

    # The quickstart teacher's shape, read from its GGUF, for the PyTorch side.
    teacher_cfg = json.loads(run([a.llama_python, str(HERE / "llamacpp_side.py"), "config", str(gguf)]))
    (work / "teacher.json").write_text(json.dumps(teacher_cfg))

    def step_case(name, yaml_text, teacher_json, batch, seq):
        ours, theirs, peak = [], [], None
        for r in range(a.rounds):
            run_name = f"{name}-{r}"
            rows, student_cfg, rss = ours_steps(a.distill, yaml_text.replace("NAME", run_name), work,
                                                run_name, a.warmup, env)
            ours += rows
            peak = max(peak or 0, rss or 0) or None
            (work / f"{name}-student.json").write_text(json.dumps(student_cfg))
            t = torch_json(a.torch_python, ["step", "--teacher", teacher_json, "--student",
                                            work / f"{name}-student.json", "--batch", batch, "--seq", seq,
                                            "--steps", a.steps, "--warmup", a.warmup, "--threads", a.threads], env)
            versions.update(torch=t["torch"], transformers=t["transformers"], torch_threads=t["threads"])
            theirs += t["rows"]
        tokens = batch * seq
        ours_tps = statistics.median(r[1] for r in ours)
        phase_rows = [r[2] for r in ours if r[2]]
        ours_ph = median_phases(phase_rows) if phase_rows else {}
        ours_ph["total"] = tokens / ours_tps
        torch_ph = median_phases(theirs)
        torch_tps = tokens / torch_ph["total"]
        return {"tokens_per_step": tokens, "steps_measured": {"ours": len(ours), "torch": len(theirs)},
                "ours": {"tokens_per_second": ours_tps, "seconds": ours_ph, "peak_rss_bytes": peak},
                "torch": {"tokens_per_second": torch_tps, "seconds": torch_ph},
                "ratio": ours_tps / torch_tps}

    n = a.warmup + a.steps
    common_train = f"""  steps: {n}
  lr: 3.0e-4
  warmup_steps: 1
  eval_every: {n}
  eval_blocks: 1
  seed: 0
"""
    if "quickstart" in cases:
        yaml_text = f"""teacher: {{source: {gguf}, device: cpu, gguf_weights: dequantized}}
data:
  source: {{kind: folder, path: {moby}, pattern: "chapter_*.txt"}}
  block_size: 128
  validation_fraction: 0.1
student: {{layers: 6, init: {{kind: from_teacher}}}}
distill: {{loss: forward_kl, temperature: 1.0, alpha: 0.5}}
train:
  batch_size: 4
{common_train}output: {{dir: {work / 'runs'}, name: NAME}}
"""
        log("case quickstart")
        result["cases"]["quickstart"] = step_case(
            "quickstart", yaml_text, work / "teacher.json", 4, 128)

    if "small" in cases:
        small = work / "small-teacher"
        run([a.torch_python, str(HERE / "small_teacher.py"), str(small), str(moby)], env=env)
        yaml_text = f"""teacher: {{source: {small}, device: cpu}}
data:
  source: {{kind: folder, path: {moby}, pattern: "chapter_*.txt"}}
  block_size: 128
  validation_fraction: 0.1
student: {{layers: 4, hidden: 256, intermediate: 768, heads: 4, kv_heads: 4, init: {{kind: from_teacher}}}}
distill: {{loss: forward_kl, temperature: 1.0, alpha: 0.5}}
train:
  batch_size: 8
{common_train}output: {{dir: {work / 'runs'}, name: NAME}}
"""
        log("case small")
        result["cases"]["small"] = step_case(
            "small", yaml_text, small / "config.json", 8, 128)

    def fwd_ours(extra, block, batch, tokens):
        j = json.loads(run([a.distill, "eval", str(gguf), "--text", str(moby / "chapter_1.txt"),
                            "--block", str(block), "--batch", str(batch), "--max-tokens", str(tokens),
                            "--device", "cpu", "--json", *extra], env=env))
        return j["tokens"] / j["forward_seconds"], j

    if "teacher" in cases:
        log("case teacher")
        ours, theirs = [], []
        for r in range(max(a.rounds, 3)):
            tps, _ = fwd_ours(["--dequantize"], 128, 4, 512 * 3)
            ours.append(tps)
            t = torch_json(a.torch_python, ["forward", "--teacher", work / "teacher.json", "--batch", 4,
                                            "--seq", 128, "--steps", 3, "--warmup", 1, "--threads", a.threads], env)
            theirs += [512 / x["total"] for x in t["rows"]]
        o, th = statistics.median(ours), statistics.median(theirs)
        result["cases"]["teacher"] = {"tokens_per_forward": 512, "ours": {"tokens_per_second": o, "samples": ours},
                                      "torch": {"tokens_per_second": th, "samples": theirs}, "ratio": o / th}

    if "gguf" in cases:
        log("case gguf")
        deq, ggml, lcpp = [], [], []
        text = moby / "chapter_1.txt"
        for r in range(5):
            deq.append(fwd_ours(["--dequantize"], 512, 1, 512)[0])
            ggml.append(fwd_ours(["--ggml"], 512, 1, 512)[0])
            j = json.loads(run([a.llama_python, str(HERE / "llamacpp_side.py"), "forward", str(gguf), str(text),
                                "--tokens", "512", "--threads", str(a.threads), "--repeats", "2"], env=env))
            versions["llama_cpp_python"] = j["version"]
            lcpp += j["tokens_per_second"]
        d, g, l = statistics.median(deq), statistics.median(ggml), statistics.median(lcpp)
        result["cases"]["gguf"] = {"tokens": 512, "ours_dequantized": {"tokens_per_second": d, "samples": deq},
                                   "ours_ggml": {"tokens_per_second": g, "samples": ggml},
                                   "llamacpp": {"tokens_per_second": l, "samples": lcpp},
                                   "ratio": d / l, "ratio_ggml": g / l}

    result["meta"]["versions"] = versions
    c = result["cases"]
    for key, case in [("step_ratio_quickstart", "quickstart"), ("step_ratio_small", "small"),
                      ("teacher_fwd_ratio", "teacher"), ("llamacpp_fwd_ratio", "gguf")]:
        if case in c:
            result[key] = c[case]["ratio"]
    if "gguf" in c:
        result["llamacpp_fwd_ratio_ggml"] = c["gguf"]["ratio_ggml"]
    write(result, Path(a.out))


def fmt_phases(s):
    return " / ".join(f"{s.get(k, float('nan')):.3f}" for k in ("forward", "backward", "optimizer"))


def write(result, out):
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "speed.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "speed.json")
    m, c = result["meta"], result["cases"]
    v = m.get("versions", {})
    lines = ["# Speed against PyTorch and llama.cpp", "",
             f"Produced by `{m['script']}` at commit {m['commit']}{' (uncommitted changes)' if m['dirty'] else ''}, {m['date']}: "
             f"{m['cpu']} ({', '.join(m['cpu_features'])}), {m['threads']} threads on {m['cores']} cores; "
             f"PyTorch {v.get('torch', '?')}, transformers {v.get('transformers', '?')}, "
             f"llama-cpp-python {v.get('llama_cpp_python', '?')}. Both sides alternate, {m['rounds']} rounds; "
             f"medians of {m['steps_per_round']} steps per round after {m['warmup']} warm-up steps. "
             "Ratios are ours over theirs in tokens/s (above 1: distill is faster).", ""]
    if any(k in c for k in ("quickstart", "small")):
        lines += ["## Training step", "",
                  "| case | distill tokens/s | PyTorch tokens/s | ratio | distill s: forward / backward / optimiser | PyTorch s: forward / backward / optimiser | distill peak RSS |",
                  "|---|---:|---:|---:|---|---|---:|"]
        for name, label in [("quickstart", "quickstart (30-layer teacher, 6-layer student, 4 × 128, vocab 49,152)"),
                            ("small", "small (6-layer d 384 teacher, 4-layer d 256 student, 8 × 128, vocab 8,192)")]:
            if name in c:
                r = c[name]
                lines.append(f"| {label} | {r['ours']['tokens_per_second']:.1f} | {r['torch']['tokens_per_second']:.1f} | "
                             f"{r['ratio']:.2f} | {fmt_phases(r['ours']['seconds'])} | {fmt_phases(r['torch']['seconds'])} | "
                             f"{(r['ours'].get('peak_rss_bytes') or 0) / 1e9:.2f} GB |")
        lines.append("")
    if "teacher" in c:
        r = c["teacher"]
        lines += ["## Teacher forward", "",
                  "| case | distill tokens/s | PyTorch tokens/s | ratio |", "|---|---:|---:|---:|",
                  f"| SmolLM2-135M dequantised, batch 4 × 128, all logits | {r['ours']['tokens_per_second']:.1f} | "
                  f"{r['torch']['tokens_per_second']:.1f} | {r['ratio']:.2f} |", ""]
    if "gguf" in c:
        r = c["gguf"]
        lines += ["## GGUF teacher forward against llama.cpp", "",
                  "SmolLM2-135M-Instruct Q4_1, the first 512 tokens of Moby Dick chapter 1 in one sequence, logits at every position.", "",
                  "| runtime | tokens/s | ratio to llama.cpp |", "|---|---:|---:|",
                  f"| llama.cpp | {r['llamacpp']['tokens_per_second']:.1f} | 1.00 |",
                  f"| distill, dequantised to f32 | {r['ours_dequantized']['tokens_per_second']:.1f} | {r['ratio']:.2f} |",
                  f"| distill, ggml path (llama.cpp's arithmetic) | {r['ours_ggml']['tokens_per_second']:.1f} | {r['ratio_ggml']:.2f} |", ""]
    lines += ["## Headline ratios", "", "| key | value |", "|---|---:|"]
    for k in ("step_ratio_quickstart", "step_ratio_small", "teacher_fwd_ratio", "llamacpp_fwd_ratio", "llamacpp_fwd_ratio_ggml"):
        if k in result:
            lines.append(f"| `{k}` | {result[k]:.2f} |")
    tmp = out / "speed.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "speed.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

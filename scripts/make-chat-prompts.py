#!/usr/bin/env python3
"""Chat prompts for configs/quickstart-chat.yaml, built from the fetched assets: instructions over
SpamAssassin emails (summarise, reply, write a subject line) and Moby Dick paragraphs (explain,
continue). One prompt per source document (an email, a chapter), so a run's split by lines keeps
training and held-out prompts on different documents. Deterministic: same assets, same file.

    scripts/make-chat-prompts.py [--assets DIR] [--out FILE] [--emails N]
"""
import argparse
import email
import email.policy
import json
import os
import random
import re
from pathlib import Path

EMAIL_KINDS = [
    ("summarise", "Summarise this email in one or two sentences.\n\n{text}"),
    ("reply", "Write a short, polite reply to this email.\n\n{text}"),
    ("subject", "Suggest a clear subject line for this email, then say in one sentence why it fits.\n\n{text}"),
]
BOOK_KINDS = [
    ("explain", "Explain in simple words what happens in this passage from Moby Dick.\n\n{text}"),
    ("continue", "Continue this passage from Moby Dick with two or three sentences in the same style.\n\n{text}"),
]
MAX_CHARS = 480
MIN_CHARS = 160


def clip(text):
    """The text cut at a sentence (else a word) end within MAX_CHARS."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= MAX_CHARS:
        return text
    cut = text[:MAX_CHARS]
    end = max(cut.rfind(". "), cut.rfind("? "), cut.rfind("! "))
    return cut[: end + 1] if end > MIN_CHARS else cut[: cut.rfind(" ")] + " …"


def email_body(path):
    """The plain-text body of an RFC 822 file without quoted lines, or None."""
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    try:
        part = msg.get_body(preferencelist=("plain",))
        body = part.get_content() if part is not None else None
    except (KeyError, LookupError, UnicodeError, AssertionError):
        return None
    if not body or "<html" in body.lower():
        return None
    lines = [l for l in body.splitlines() if not l.lstrip().startswith(">")]
    lines = [l for l in lines if not re.match(r"^(-- ?|_{5,}|-{5,})$", l.strip())]
    text = clip(" ".join(lines))
    ascii_share = sum(c.isascii() for c in text) / max(1, len(text))
    return text if len(text) >= MIN_CHARS and ascii_share > 0.97 else None


def chapter_paragraph(path, rng):
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in path.read_text().split("\n\n")]
    paragraphs = [p for p in paragraphs if MIN_CHARS <= len(p)]
    return clip(rng.choice(paragraphs)) if paragraphs else None


def main():
    default_assets = os.environ.get("DISTILL_ASSETS", str(Path.home() / ".cache/distill/assets"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=default_assets)
    ap.add_argument("--out", default="runs/chat-prompts.jsonl")
    ap.add_argument("--emails", type=int, default=150)
    a = ap.parse_args()
    assets = Path(a.assets)
    rng = random.Random(0)
    prompts = []
    chapters = sorted((assets / "moby-dick").glob("chapter_*.txt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    for i, path in enumerate(chapters):
        text = chapter_paragraph(path, rng)
        if text:
            kind, template = BOOK_KINDS[i % len(BOOK_KINDS)]
            prompts.append({"kind": kind, "source": f"moby-dick/{path.name}", "text": template.format(text=text)})
    mails = sorted((assets / "spam-assassin").glob("*/*.txt"))
    rng.shuffle(mails)
    taken = 0
    for path in mails:
        if taken == a.emails:
            break
        text = email_body(path)
        if text:
            kind, template = EMAIL_KINDS[taken % len(EMAIL_KINDS)]
            prompts.append({"kind": kind, "source": f"spam-assassin/{path.parent.name}/{path.name}", "text": template.format(text=text)})
            taken += 1
    rng.shuffle(prompts)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with tmp.open("w") as f:
        for p in prompts:
            f.write(json.dumps({"messages": [{"role": "user", "content": p["text"]}], "kind": p["kind"], "source": p["source"]}) + "\n")
    tmp.replace(out)
    kinds = {}
    for p in prompts:
        kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
    print(f"{out}: {len(prompts)} prompts ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")


if __name__ == "__main__":
    main()

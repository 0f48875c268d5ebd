#!/usr/bin/env python3
"""The workspace's structure, measured from its sources.

Checks that no crate has a file-level import cycle (a file that, through `use crate::…`,
`use super::…` or an inline `crate::…` path, depends on a file that depends back on it) and
reports, for library code outside tests: functions over 100 and over 120 lines, functions with
six or more and with more than seven arguments (`self` not counted), and files over 500 lines.

    scripts/check-structure.py            # exit 1 on an import cycle; the counts are printed
    scripts/check-structure.py --list     # also every long function and long argument list
    scripts/check-structure.py --strict   # also exit 1 on a function over 120 lines or 7 args

Test code (`#[cfg(test)] mod tests` at the end of a file, `tests/` folders) is left out of the
counts; an inline test module's own `use super::*` refers to its file and is not an edge.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def strip_tests(text):
    """The file without its trailing inline test module."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\nmod \w+ \{", text, re.M)
    return text[: m.start()] if m else text


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def module_of(src, path):
    """`a::b` for src/a/b.rs or src/a/b/mod.rs; `` for lib.rs/main.rs."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def expand_use(tree):
    """Paths of a use tree (`a::{b, c::d}` → a::b, a::c::d)."""
    tree = tree.strip()
    i = tree.find("{")
    if i < 0:
        return [tree.split(" as ")[0].strip()]
    prefix, inner = tree[:i], tree[i + 1 : tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += [prefix + q for q in expand_use(p)]
    return out


def crate_graph(src):
    files = {}
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(d, n)
                files[tuple(module_of(src, p))] = p
    edges = {m: set() for m in files}
    for mod, path in files.items():
        text = strip_comments(strip_tests(open(path, encoding="utf-8").read()))
        is_dir_module = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
        parent = list(mod) if is_dir_module else list(mod[:-1])
        targets = []
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text, re.M):
            targets += expand_use(m.group(1))
        targets += re.findall(r"(?<![\w:])(crate::[A-Za-z_][\w:]*)", text)
        targets += re.findall(r"(?<![\w:])(super::[A-Za-z_][\w:]*)", text)
        for t in targets:
            segs = [s for s in t.replace(" ", "").split("::") if s]
            if not segs:
                continue
            if segs[0] == "crate":
                base, segs = [], segs[1:]
            elif segs[0] == "super":
                base = parent[:-1] if is_dir_module else parent[:]
                if is_dir_module:
                    base = list(mod[:-1])
                segs = segs[1:]
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
            elif segs[0] == "self":
                base, segs = list(mod) if is_dir_module else list(mod[:-1]), segs[1:]
            else:
                continue
            full = base + segs
            # the longest prefix that is a file of this crate
            for k in range(len(full), -1, -1):
                key = tuple(full[:k])
                if key in files:
                    if key != mod:
                        edges[mod].add(key)
                    break
    return files, edges


def cycles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in edges:
        if v not in index:
            visit(v)
    return out


def functions(path):
    """(name, line, body lines, arguments) of each function outside tests."""
    text = strip_tests(open(path, encoding="utf-8").read())
    out = []
    for m in re.finditer(r"\bfn\s+(\w+)\s*(<[^>{]*>)?\s*\(", text):
        i = m.end() - 1
        depth, j = 0, i
        while j < len(text):
            if text[j] in "([":
                depth += 1
            elif text[j] in ")]":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        params, parts, d, cur = text[i + 1 : j], [], 0, ""
        for ch in params:
            if ch in "(<[{":
                d += 1
            elif ch in ")>]}":
                d -= 1
            if ch == "," and d == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        args = [p for p in parts if p.strip() and not re.fullmatch(r"\s*&?\s*('\w+\s+)?(mut\s+)?self\s*", p)]
        k, semi = text.find("{", j), text.find(";", j)
        if k < 0 or (0 <= semi < k):
            continue
        d, e = 0, k
        while e < len(text):
            if text[e] == "{":
                d += 1
            elif text[e] == "}":
                d -= 1
                if d == 0:
                    break
            e += 1
        out.append((m.group(1), text[: m.start()].count("\n") + 1, text[k:e].count("\n"), len(args)))
    return out


def main():
    strict, listing = "--strict" in sys.argv, "--list" in sys.argv
    crates = sorted(os.listdir(os.path.join(ROOT, "crates")))
    found, long100, long120, args6, args8, big = [], [], [], [], [], []
    for c in crates:
        src = os.path.join(ROOT, "crates", c, "src")
        if not os.path.isdir(src):
            continue
        files, edges = crate_graph(src)
        for comp in cycles(edges):
            found.append((c, sorted(os.path.relpath(files[m], ROOT) for m in comp)))
        for path in files.values():
            rel = os.path.relpath(path, ROOT)
            n = open(path, encoding="utf-8").read().count("\n")
            if n > 500:
                big.append((n, rel))
            for name, line, body, nargs in functions(path):
                where = f"{rel}:{line} {name}"
                if body > 100:
                    long100.append((body, where))
                if body > 120:
                    long120.append((body, where))
                if nargs >= 6:
                    args6.append((nargs, where))
                if nargs > 7:
                    args8.append((nargs, where))
    for c, comp in found:
        print(f"import cycle in crates/{c}: " + " -> ".join(comp))
    print(f"file-level import cycles: {len(found)}")
    print(f"functions over 100 lines: {len(long100)}; over 120: {len(long120)}")
    print(f"functions with 6 or more arguments: {len(args6)}; more than 7: {len(args8)}")
    print(f"files over 500 lines: {len(big)}")
    if listing:
        for title, rows in (("over 100 lines", long100), ("6+ arguments", args6), ("files over 500 lines", big)):
            print(f"\n{title}:")
            for n, w in sorted(rows, reverse=True):
                print(f"  {n:4}  {w}")
    if found or (strict and (long120 or args8)):
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # a reader that stopped early (`| head`)
        sys.exit(0)

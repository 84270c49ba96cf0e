#!/usr/bin/env python3
"""Fails on an import circle in src/, at two scales: between files, and
between the crate's top-level modules (a folder counts as one). Run by
`make lint`. An arrow is any path a file names: `use crate::a::b`,
`crate::a::b::f(...)` inline, or `super::x`, resolved to the deepest module
file that exists. `mod x;` declarations are not arrows. With no circle
between top-level modules, the modules stand on floors (printed with -v):
each imports only from floors below it, which is what "nothing imports
uphill" means here."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)*)::\{([^}]*)\}", re.S)


def module_of(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def main():
    files = {}
    for p in sorted(ROOT.rglob("*.rs")):
        if p.relative_to(ROOT).parts[0] in ("bin", "main.rs"):
            continue
        files[module_of(p)] = p
    edges = {m: set() for m in files}

    def resolve(mod, head, segs):
        base = list(mod) if head == "super" else []
        if head == "super":
            # `super` of a file module is its parent; of a mod.rs, the folder's parent.
            is_dir = files[mod].name == "mod.rs"
            base = base[:-1] if not is_dir else base[:-1]
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
        path = base + segs
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in files:
                return tuple(path[:n])
        return None

    for mod, p in files.items():
        text = "\n".join(line.split("//")[0] for line in p.read_text().splitlines())
        found = []
        for m in GROUP.finditer(text):
            prefix = [s for s in m.group(2).split("::") if s]
            for item in m.group(3).split(","):
                item = item.strip().split(" as ")[0]
                first = [s for s in item.split("::") if s and s != "self" and s != "*"]
                found.append((m.group(1), prefix + first))
        for m in PATH.finditer(text):
            found.append((m.group(1), [s for s in m.group(2).split("::") if s]))
        for head, segs in found:
            target = resolve(mod, head, segs)
            if target is not None and target != mod:
                edges[mod].add(target)

    def sccs(graph):
        index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
        sys.setrecursionlimit(10000)

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph[v]:
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

        for v in graph:
            if v not in index:
                visit(v)
        return out

    name = lambda m: "::".join(m) or "crate"
    bad = False
    for comp in sccs(edges):
        bad = True
        print("import circle between files: " + ", ".join(str(files[m].relative_to(ROOT.parent)) for m in sorted(comp)))
        for a in sorted(comp):
            for b in sorted(edges[a] & set(comp)):
                print(f"  {name(a)} -> {name(b)}")
    top = {}
    for a, bs in edges.items():
        if not a:
            continue
        top.setdefault(a[0], set())
        for b in bs:
            if b and b[0] != a[0]:
                top[a[0]].add(b[0])
                top.setdefault(b[0], set())
    for comp in sccs(top):
        bad = True
        print("import circle between top-level modules: " + ", ".join(sorted(comp)))
        for a in sorted(comp):
            for b in sorted(top[a] & set(comp)):
                why = sorted(name(x) + " -> " + name(y) for x in edges for y in edges[x] if x and y and x[0] == a and y[0] == b)
                print(f"  {a} -> {b}: " + "; ".join(why[:4]))
    if bad:
        sys.exit(1)
    if "-v" in sys.argv:
        floor = {}
        def f(m):
            if m not in floor:
                floor[m] = 1 + max((f(d) for d in top[m]), default=0)
            return floor[m]
        for m in top:
            f(m)
        for n in range(max(floor.values()), 0, -1):
            print(f"floor {n}: " + ", ".join(sorted(m for m in floor if floor[m] == n)))


main()

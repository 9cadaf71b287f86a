#!/usr/bin/env python3
"""The shape checks CI runs on the workspace's own code (tests and patched crates aside):

1. the module graph of every crate is a tree: at every level of the module hierarchy, the
   sibling modules' references to each other (`crate::a::b`, `super::x`, and names re-exported
   at the crate root) form no cycle;
2. no function is longer than 80 lines (counted from `fn` to its closing brace, blank lines and
   comments included; clippy's `too_many_lines` counts code lines only);
3. no line of code is wider than 100 columns once comments and the contents of its string
   literals are removed: rustfmt silently gives up on a block holding a line it cannot fit.
   Unit-test modules are left out (their tables are `#[rustfmt::skip]` on purpose).

Exit 1 with the findings, 0 when all pass. Usage: scripts/check-shape.py [--verbose]"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {  # crate root file -> directory its modules live in
    "tchu-core/src/lib.rs": "tchu-core/src",
    "tchu-macros/src/lib.rs": "tchu-macros/src",
    "tchu-runtime/src/lib.rs": "tchu-runtime/src",
    "src/lib.rs": "src",
    "tchu-cli/src/main.rs": "tchu-cli/src",
}
MAX_FN_LINES = 80
MAX_WIDTH = 100
FN = re.compile(r'^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?'
                r'(?:extern\s+"[^"]*"\s+)?fn\s+([A-Za-z_]\w*)')


def scan_literal(src, i):
    """The end (exclusive) of the string or char literal starting at i, or None."""
    m = re.match(r'b?r(#*)"', src[i:i + 12])
    if m and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == '_')):
        e = src.find('"' + m.group(1), i + m.end())
        return len(src) if e < 0 else e + 1 + len(m.group(1))
    c = src[i]
    if c == '"' or (c == 'b' and src[i + 1:i + 2] == '"'
                    and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == '_'))):
        j = i + (2 if c == 'b' else 1)
        while j < len(src) and src[j] != '"':
            j += 2 if src[j] == '\\' else 1
        return j + 1
    return None


def blank(src, keep_comments=False, drop_strings=False):
    """Comments and literal contents as spaces (or, with drop_strings, literals as `""`)."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith('//', i):
            j = src.find('\n', i)
            j = n if j < 0 else j
            out.append(src[i:j] if keep_comments else ' ' * (j - i))
            i = j
            continue
        if src.startswith('/*', i):
            d, j = 0, i
            while j < n:
                if src.startswith('/*', j):
                    d, j = d + 1, j + 2
                elif src.startswith('*/', j):
                    d, j = d - 1, j + 2
                    if d == 0:
                        break
                else:
                    j += 1
            out.append(src[i:j] if keep_comments else re.sub(r'[^\n]', ' ', src[i:j]))
            i = j
            continue
        e = scan_literal(src, i)
        if e is not None:
            lit = src[i:e]
            if drop_strings:
                out.append('""' + '\n' * lit.count('\n'))
            else:
                out.append(re.sub(r'[^\n]', ' ', lit))
            i = e
            continue
        if src[i] == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:i + 12])
            if m:
                out.append(' ' * m.end())
                i += m.end()
                continue
        out.append(src[i])
        i += 1
    return ''.join(out)


def strip_test_mods(s):
    for m in reversed(list(re.finditer(r'#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{', s))):
        d = 0
        for k in range(m.end() - 1, len(s)):
            if s[k] == '{':
                d += 1
            elif s[k] == '}':
                d -= 1
                if d == 0:
                    break
        s = s[:m.start()] + re.sub(r'[^\n]', ' ', s[m.start():k + 1]) + s[k + 1:]
    return s


def long_fns(text):
    lines = text.split('\n')
    for ln, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        rest = '\n'.join(lines[ln:ln + 3000])
        start, par = None, 0
        for k, ch in enumerate(rest):
            if ch in '([':
                par += 1
            elif ch in ')]':
                par -= 1
            elif ch == ';' and par == 0:
                break
            elif ch == '{' and par == 0:
                start = k
                break
        if start is None:
            continue
        d = 0
        for k2 in range(start, len(rest)):
            if rest[k2] == '{':
                d += 1
            elif rest[k2] == '}':
                d -= 1
                if d == 0:
                    break
        n = rest[:k2].count('\n') + 1
        if n > MAX_FN_LINES:
            yield m.group(1), n, ln + 1


def modules_of(root_file, src_dir):
    """module path (tuple) -> file, for every file module reachable from the crate root."""
    mods = {(): root_file}
    stack = [((), root_file)]
    while stack:
        path, f = stack.pop()
        text = strip_test_mods(blank(open(os.path.join(ROOT, f)).read()))
        here = os.path.dirname(f)
        if path and not f.endswith('mod.rs') and f != root_file:
            here = os.path.join(here, os.path.basename(f)[:-3])
        for m in re.finditer(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;', text, re.M):
            name = m.group(1)
            for cand in (os.path.join(here, name + '.rs'), os.path.join(here, name, 'mod.rs')):
                if os.path.exists(os.path.join(ROOT, cand)):
                    mods[path + (name,)] = cand
                    stack.append((path + (name,), cand))
                    break
    return mods


def root_reexports(root_file, mods):
    """A name re-exported at the crate root -> the module it comes from."""
    text = blank(open(os.path.join(ROOT, root_file)).read())
    out = {}
    for m in re.finditer(r'pub use\s+([a-z_][a-z0-9_]*)((?:::[a-z_][a-z0-9_]*)*)::(\{[^}]*\}|\w+)', text):
        path = (m.group(1),) + tuple(p for p in m.group(2).split('::') if p)
        while path and path not in mods:
            path = path[:-1]
        if not path:
            continue
        for name in re.findall(r'\w+', m.group(3)):
            out[name] = path
    return out


def references(text, path, mods, reexports):
    """The modules a file's code names."""
    refs = set()
    expanded = []
    for m in re.finditer(r'\b(crate|super(?:::super)*)::\{([^}]*)\}', text):
        for item in m.group(2).split(','):
            expanded.append(m.group(1) + '::' + item.strip())
    for m in re.finditer(r'\b(crate|super(?:::super)*)((?:::\w+)+)', text):
        expanded.append(m.group(1) + m.group(2))
    for ref in expanded:
        parts = [p for p in ref.split('::') if p]
        if parts[0] == 'crate':
            base, rest = (), parts[1:]
        else:
            ups = 0
            while parts and parts[0] == 'super':
                ups, parts = ups + 1, parts[1:]
            is_dir = mods.get(path, '').endswith('mod.rs')
            base, rest = path[:max(0, len(path) - ups)], parts
            del is_dir
        target = base
        for p in rest:
            if target + (p,) in mods:
                target = target + (p,)
            else:
                if target == () and p in reexports:
                    target = reexports[p]
                break
        refs.add(target)
    return refs


def cycles_of(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
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
                comps.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def module_cycles(root_file, src_dir, verbose):
    mods = modules_of(root_file, src_dir)
    reexports = root_reexports(root_file, mods)
    levels = {}
    for path, f in mods.items():
        text = strip_test_mods(blank(open(os.path.join(ROOT, f)).read()))
        for target in references(text, path, mods, reexports):
            common = 0
            while common < min(len(path), len(target)) and path[common] == target[common]:
                common += 1
            if common == len(path) or common == len(target):
                continue  # a module and its own ancestor or descendant
            parent = path[:common]
            levels.setdefault(parent, set()).add((path[common], target[common]))
    found = []
    for parent, edges in sorted(levels.items()):
        if verbose:
            print(f"  {root_file} {'::'.join(parent) or 'crate'}: "
                  + ", ".join(f"{a}->{b}" for a, b in sorted(edges)))
        for comp in cycles_of(edges):
            where = '::'.join(parent) or 'crate'
            found.append(f"{root_file}: module cycle under `{where}`: {' <-> '.join(comp)}")
    return found


def main():
    verbose = '--verbose' in sys.argv
    problems = []
    for root_file, src_dir in CRATES.items():
        problems.extend(module_cycles(root_file, src_dir, verbose))
    for root_file, src_dir in CRATES.items():
        for f in sorted(set(modules_of(root_file, src_dir).values())):
            src = open(os.path.join(ROOT, f)).read()
            for name, n, ln in long_fns(strip_test_mods(blank(src))):
                problems.append(f"{f}:{ln}: fn `{name}` is {n} lines (at most {MAX_FN_LINES})")
            code = strip_test_mods(blank(src, drop_strings=True))
            for ln, line in enumerate(code.split('\n')):
                if len(line.rstrip()) > MAX_WIDTH:
                    problems.append(f"{f}:{ln + 1}: {len(line.rstrip())} columns without its strings "
                                    f"(at most {MAX_WIDTH})")
    for p in problems:
        print(p)
    print(f"shape: {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


main()

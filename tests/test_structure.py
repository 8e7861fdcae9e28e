"""The shape of the package: no import cycles, counting the imports inside functions that would
otherwise hide one; every module imports on its own in a fresh interpreter."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lambda_blocks"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _targets(mod: str, path: Path, node, mods) -> list[str]:
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            parts = pkg.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names = [f"{base}.{a.name}" for a in node.names]
        return [n if n in mods else base for n in names if (n if n in mods else base) in mods]
    return [a.name for a in node.names if a.name in mods]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body (functions included)."""
    mods = _modules()
    g = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                g[m].update(t for t in _targets(m, p, node, mods) if t != m)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_and_only_real_ones():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_package_has_no_import_cycles():
    g = import_graph()
    assert "lambda_blocks.loading" in g["lambda_blocks.evaluate"]  # the graph does see function-level imports
    found = cycles(g)
    assert not found, "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_config_engine_is_a_leaf():
    assert import_graph()["lambda_blocks.cfgcore"] == set()


_IMPORT_EACH = """
import importlib, sys, traceback
bad = []
for mod in sys.argv[1:]:
    for name in [k for k in sys.modules if k == "lambda_blocks" or k.startswith("lambda_blocks.")]:
        del sys.modules[name]  # each module first, with nothing of the package imported before it
    try:
        importlib.import_module(mod)
    except Exception:
        bad.append(mod + ": " + traceback.format_exc(limit=3))
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    mods = sorted(m for m in _modules() if m != "lambda_blocks" and not m.endswith(".__main__"))  # __main__ runs a CLI
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *mods], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]

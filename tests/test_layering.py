"""The package's layers hold (docs/architecture.md): each layer imports only from the layers below it, no two
modules import each other (directly or round a loop), imports sit at module top, and ``import rlxf`` is light.

Read from the source with ``ast`` (nothing is imported), so a violation is reported with file and line."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rlxf"

# Every layer, and the rlxf packages it may import. `config` (typed configs, no rlxf imports) and `types` (the
# shared records) are leaves any layer may use.
BASE = {"rlxf.config", "rlxf.types"}
ALLOWED: dict[str, set[str]] = {
    "rlxf.types": set(),
    "rlxf.config": set(),
    "rlxf.ops": {"rlxf.types"},
    "rlxf.objectives": {"rlxf.ops"},
    "rlxf.data": {"rlxf.ops"},
    "rlxf.models": {"rlxf.ops", "rlxf.data"},
    # ops sits below models; the mixture sampler (Nash-MD) reads its geometric_mixture_logprobs
    "rlxf.rollout": {"rlxf.ops", "rlxf.models", "rlxf.data"},
    "rlxf.feedback": {"rlxf.ops", "rlxf.models", "rlxf.rollout", "rlxf.data"},
    "rlxf.runs": {"rlxf.models"},
    "rlxf.eval": {"rlxf.ops", "rlxf.objectives", "rlxf.data", "rlxf.models", "rlxf.rollout", "rlxf.feedback",
                  "rlxf.runs"},
    "rlxf.distributed": {"rlxf.ops", "rlxf.data", "rlxf.models", "rlxf.rollout", "rlxf.feedback"},
    "rlxf.recipes": {"rlxf.ops", "rlxf.objectives", "rlxf.data", "rlxf.models", "rlxf.rollout", "rlxf.feedback",
                     "rlxf.runs", "rlxf.eval", "rlxf.distributed"},
    "rlxf.cli": {"rlxf"},
    "rlxf.__main__": {"rlxf.cli"},
    "rlxf.testing": {"rlxf.ops", "rlxf.objectives", "rlxf.data"},
    "rlxf": set(),  # the flat API imports lazily, by name, on first use
}
# Imported inside functions on purpose: optional or heavy, needed by few code paths.
LAZY = {"matplotlib", "math_verify", "ray", "vllm"}
# Scripts run as child processes that keep their start-up imports minimal.
CHILD_SCRIPTS = {"rlxf.feedback._sandbox_launcher", "rlxf.feedback._math_worker"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                for a in child.names:  # `from pkg import submodule` imports the submodule
                    target = f"{child.module}.{a.name}"
                    found.append((target if target in MODULES else child.module, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def test_every_module_belongs_to_a_layer():
    assert {_layer(m) for m in MODULES} <= set(ALLOWED), {_layer(m) for m in MODULES} - set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_layers_below(module):
    layer = _layer(module)
    allowed = ALLOWED[layer] | BASE | {layer}
    wrong = [f"{MODULES[module]}:{line}: {name}" for name, line, _ in _imports(module)
             if name.split(".")[0] == "rlxf" and _layer(name) not in allowed and not (layer == "rlxf.cli")]
    assert not wrong, f"{layer} may import {sorted(allowed)}; found " + "; ".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_sit_at_module_top(module):
    late = [f"{MODULES[module]}:{line}: {name}" for name, line, inside in _imports(module)
            if inside and name.split(".")[0] not in LAZY and module not in CHILD_SCRIPTS]
    assert not late, "imports inside functions (hoist them, or add a truly optional dependency to LAZY): " + \
        "; ".join(late)


def test_ray_only_in_distributed():
    users = [m for m in MODULES for name, _, _ in _imports(m) if name.split(".")[0] == "ray"
             and _layer(m) != "rlxf.distributed"]
    assert not users


def test_no_import_cycles():
    """No module reaches itself through the imports of rlxf modules (Tarjan's strongly connected components)."""
    graph = {m: sorted({n for n, _, _ in _imports(m) if n in MODULES and n != m}) for m in MODULES}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def strongconnect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for m in graph:
        if m not in index:
            strongconnect(m)
    # A package's __init__ re-exporting its submodules is the one loop Python resolves by construction: drop
    # edges from a submodule to its own package's __init__ and report what remains.
    real = []
    for component in cycles:
        inner = {m: [n for n in graph[m] if n in component and not m.startswith(n + ".")] for m in component}
        if any(inner[m] for m in component) and _has_cycle(inner):
            real.append(component)
    assert not real, f"import cycles: {real}"


def _has_cycle(graph: dict[str, list[str]]) -> bool:
    state: dict[str, int] = {}

    def visit(v) -> bool:
        state[v] = 1
        for w in graph[v]:
            if state.get(w) == 1 or (w not in state and visit(w)):
                return True
        state[v] = 2
        return False

    return any(visit(v) for v in graph if v not in state)


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checks above fail on a module that breaks them (so that they can fail at all)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import rlxf.recipes.online_rl\n\n\ndef f():\n    from rlxf.models import load_policy\n")
    monkeypatch.setitem(MODULES, "rlxf.ops.bad", bad)
    with pytest.raises(AssertionError, match="rlxf.recipes.online_rl"):
        test_imports_only_from_layers_below("rlxf.ops.bad")
    with pytest.raises(AssertionError, match="rlxf.models"):
        test_imports_sit_at_module_top("rlxf.ops.bad")
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from rlxf.ops import b\n")
    b.write_text("import rlxf.ops.a\n")
    monkeypatch.setitem(MODULES, "rlxf.ops.a", a)
    monkeypatch.setitem(MODULES, "rlxf.ops.b", b)
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


def test_import_rlxf_is_light_and_the_flat_api_resolves():
    code = ("import sys, rlxf; assert 'torch' not in sys.modules, 'import rlxf loaded torch'; "
            "names = [n for n in rlxf.__all__ if n != '__version__']; "
            "[getattr(rlxf, n) for n in names]; print(len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 100


def test_flat_api_names_are_the_home_modules_objects():
    import importlib

    import rlxf

    for module, names in rlxf._API.items():
        home = importlib.import_module(module)
        for name in names:
            assert getattr(rlxf, name) is getattr(home, name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rlxf.nope  # noqa: B018

"""The package's import structure: ``import patchmix`` stays light (no DEAP, no DEAP ``creator`` classes), and
no module imports one that imports it back.

The import graph is built statically with ``ast`` over every module of ``patchmix/`` and of ``kernels/``
(installed as ``patchmix._kernels``). Counted: every ``import`` / ``from ... import`` statement, at module
level *and* inside functions (a lazy import still makes two modules depend on each other; laziness only
moves the failure to run time), and ``importlib.import_module`` with a literal name. Not counted: the
implicit import of a module's parent packages (``import patchmix.ops.grid_mix`` runs ``patchmix/__init__``
and ``patchmix/ops/__init__`` first: every module would otherwise sit in a cycle with its package), and
module names computed at run time, except the op registry's ``import_module(f"patchmix._kernels.{name}")``,
added by hand as an edge from ``patchmix.ops._registry`` to every kernel module (it is how a kernel would
close a cycle with the module that registers it), and ``patchmix.search``'s lazy export of its genetic module.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """``{dotted name: file}`` for patchmix/**.py and kernels/*.py (as patchmix._kernels.*)."""
    mods = {}
    for base, prefix in ((ROOT / "patchmix", "patchmix"), (ROOT / "kernels", "patchmix._kernels")):
        for f in base.rglob("*.py"):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = f
    return mods


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
    if not level:
        return module
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    """Edges ``a -> b``: module ``a`` imports module ``b`` (both in the package)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", node.level, name, is_package)
                # `from pkg import sub` imports the submodule pkg.sub; `from mod import obj` imports mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                target = node.args[0].value  # import_module(".genetic", __name__) is relative to this package
                level = len(target) - len(target.lstrip("."))
                targets = [_resolve(target.lstrip("."), level, name, is_package)]
            graph[name] |= {t for t in targets if t in mods and t != name}
    graph["patchmix.ops._registry"] |= {m for m in mods if m.startswith("patchmix._kernels.")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_package():
    g = import_graph()
    assert "patchmix.training.loop" in g and "patchmix._kernels.grid_mix" in g
    assert "patchmix.training.methods" in g["patchmix.training.loop"]  # from .methods import Method
    assert "patchmix.search.pairs" in g["patchmix.search.genetic"]
    assert "patchmix.ops.contracts.grid_mix" in g["patchmix._kernels.grid_mix"]  # absolute imports resolve too
    assert "patchmix._kernels.grid_mix" in g["patchmix.ops._registry"]  # the registry's computed import
    assert "patchmix.search.genetic" in g["patchmix.search"]  # the lazy export, by importlib


def test_no_module_imports_one_that_imports_it_back():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


#: The layer map (docs/architecture.md, "Module map"), bottom to top: a module imports only from its own layer or
#: below. A module belongs to the layer of its longest matching prefix.
LAYERS = (
    ("leaves", ("patchmix._version", "patchmix._optional", "patchmix.errors", "patchmix.choices", "patchmix.seeding",
                "patchmix.files")),
    ("ops", ("patchmix.ops", "patchmix._kernels")),
    ("data", ("patchmix.data",)),
    ("mixing, loss", ("patchmix.mixing", "patchmix.losses")),
    ("models", ("patchmix.models",)),
    ("localization", ("patchmix.localization",)),
    ("search", ("patchmix.search",)),
    ("guided", ("patchmix.guided",)),
    ("config", ("patchmix.presets", "patchmix.config_keys", "patchmix.config")),
    ("training", ("patchmix.training", "patchmix.train")),
    ("application", ("patchmix.workflow", "patchmix.cli", "patchmix.__main__")),
    ("package", ("patchmix",)),
)


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of ``module``'s layer (its longest matching prefix), None if unmapped."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return best[0] if best else None


def test_every_module_has_a_layer():
    assert not [m for m in import_graph() if layer_of(m) is None]


def test_modules_import_only_from_their_layer_or_below():
    g = import_graph()
    up = [f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
          for a in sorted(g) for b in sorted(g[a]) if layer_of(b) > layer_of(a)]
    assert not up, "imports from a higher layer: " + "; ".join(up)


def test_data_does_not_import_mixing():
    g = import_graph()
    bad = sorted((a, b) for a in g if a.startswith("patchmix.data") for b in g[a] if b.startswith("patchmix.mixing"))
    assert not bad, bad


def test_the_guided_sampler_sits_above_the_search_and_mixing_below_it():
    g = import_graph()
    assert "patchmix.search.policy" in g["patchmix.guided"]
    assert not [m for m in g if m.startswith("patchmix.mixing") and any(t.startswith("patchmix.search") for t in g[m])]


def test_kernels_depend_only_downward():
    """A Triton kernel module imports only the op contracts, the error status and other kernel modules: never
    the module that registers it, nor anything above the op layer."""
    g = import_graph()
    allowed = ("patchmix._kernels", "patchmix.ops.contracts", "patchmix.ops.errors")
    for mod in (m for m in g if m.startswith("patchmix._kernels")):
        bad = sorted(t for t in g[mod] if not t.startswith(allowed))
        assert not bad, f"{mod} imports {bad}"


def test_localization_depends_only_on_ops_data_and_models():
    """patchmix.localization (CAMs and the WSOL metrics) sits above the ops, the data (whose ``resize_box`` it
    shares) and the models, and below training and the workflow, which call it: it imports nothing else."""
    g = import_graph()
    allowed = ("patchmix.localization", "patchmix.ops", "patchmix.data", "patchmix.models")
    mods = [m for m in g if m.startswith("patchmix.localization")]
    assert "patchmix.localization.metrics" in mods
    for mod in mods:
        bad = sorted(t for t in g[mod] if not t.startswith(allowed))
        assert not bad, f"{mod} imports {bad}"


#: The most lines a module of the package may have (the Triton kernels and C++ sources live outside ``patchmix/``).
MAX_MODULE_LINES = 500


def test_no_module_is_over_500_lines():
    """A module past this length holds more than one concern: split it along its seams."""
    long = {str(f.relative_to(ROOT)): n for f in (ROOT / "patchmix").rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_import_patchmix_does_not_import_deap():
    r = _python("import patchmix, sys; assert 'deap' not in sys.modules, 'deap imported'")
    assert r.returncode == 0, r.stderr
    # the search's light parts neither
    r = _python("import sys; from patchmix.search import CachedFitness, Policy, SearchConfig, pair_classes; "
                "import patchmix.training, patchmix.cli, patchmix.workflow; assert 'deap' not in sys.modules")
    assert r.returncode == 0, r.stderr


def test_deap_creator_classes_are_made_on_first_use():
    r = _python("import patchmix.search.genetic as g; from deap import creator; "
                "assert not hasattr(creator, 'PatchMixIndividualMin'), 'created at import'; "
                "cls = g.individual_class('max'); assert cls is creator.PatchMixIndividualMax; "
                "from patchmix.search import search; assert search is g.search")
    assert r.returncode == 0, r.stderr


def test_patchmix_train_is_a_shim_over_patchmix_training():
    import patchmix.train
    import patchmix.training

    assert list(patchmix.train.__all__) == list(patchmix.training.__all__)
    for name in patchmix.training.__all__:
        assert getattr(patchmix.train, name) is getattr(patchmix.training, name)
    assert patchmix.__version__


#: The packages whose ``__all__`` is their public API (docs/architecture.md, "Public API").
PUBLIC_PACKAGES = ("patchmix", "patchmix.mixing", "patchmix.ops", "patchmix.models", "patchmix.training",
                   "patchmix.train")


def test_packages_export_exactly_their_all():
    """A package's namespace holds its ``__all__`` and its submodules, nothing else public: internal names are
    imported from their submodule (``patchmix.training.methods``), not through the package."""
    import __future__

    import importlib
    import types

    for pkg in PUBLIC_PACKAGES:
        mod = importlib.import_module(pkg)
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, f"{pkg}.__all__ names what it lacks: {missing}"
        extra = sorted(n for n, v in vars(mod).items() if not n.startswith("_") and n not in mod.__all__
                       and not isinstance(v, (types.ModuleType, __future__._Feature)))
        assert not extra, f"{pkg} exports names outside its __all__: {extra}"

"""The package's layering (docs/architecture.md): imports only go down the data flow, no cycles,
no module over ~400 lines. Walks every import of every module with `ast` (function-level imports
count; imports under `if TYPE_CHECKING:` are type hints only and may name the facade)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "mlxterp"

# Stages of the data flow, top (used by all) to bottom (uses all). A module may import modules
# of its own stage or of earlier ones, never of a later one.
STAGES = [
    {"errors", "io_utils", "platform", "batching", "distributed"},
    {"hookpoint", "loading"},
    {"anatomy"},
    {"attention", "fast_forward", "tracing", "envoy", "generation", "patching", "gradients", "attribution",
     "heads", "lens"},
    {"data", "activations"},
    {"sae"},
    {"features", "pipeline"},
    {"viz"},
    {"model"},
    {"cli", "__init__", "__main__"},
]
MAX_LINES = 425


def stage_of(module: str) -> int:
    """The stage of a dotted module name inside the package ("mlxterp.sae.train" -> sae's)."""
    top = module.split(".")[1] if "." in module else "__init__"
    for index, names in enumerate(STAGES):
        if top in names:
            return index
    raise AssertionError(f"module {module} belongs to no stage: add its top-level name to STAGES")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """Package modules `path` imports at run time (any depth in the file, TYPE_CHECKING excluded)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mlxterp"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("mlxterp"):
                continue
            # `from . import train_data` imports the submodule, not the package's __init__
            submodules = {f"{target}.{a.name}" for a in node.names}
            submodules = {m for m in submodules if _exists(m)}
            found.update(submodules if len(submodules) == len(node.names) else {target})
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent / module.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_stage_table_matches_the_package():
    for module in all_modules():
        stage_of(module)


def test_no_module_imports_upward():
    upward = []
    for module, path in all_modules().items():
        for target in runtime_imports(path):
            if stage_of(target) > stage_of(module):
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the data flow:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    modules = all_modules()
    graph = {m: {t for t in runtime_imports(p) if t in modules and t != m} for m, p in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by concept"


def test_detects_an_upward_import():
    """The walk above sees function-level and relative imports (so it can fail)."""
    fake = PACKAGE / "sae" / "_probe_upward.py"
    fake.write_text("def f():\n    from ..features import analyze_text\n    return analyze_text\n")
    try:
        imports = runtime_imports(fake)
        assert "mlxterp.features" in imports
        assert stage_of("mlxterp.features") > stage_of("mlxterp.sae._probe_upward")
    finally:
        fake.unlink()

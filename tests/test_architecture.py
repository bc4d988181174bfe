"""The package's shape: no import cycles, datasets named only in the data package, thin entry points."""

import ast
from pathlib import Path

from aelab.cli import TASKS

from conftest import REPO

PACKAGE = REPO / "src" / "aelab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every aelab module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("aelab")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        # ``from aelab.data import X`` depends on aelab.data; names that are not modules are dropped
        edges[name] = {target for target in imports_of(path) if target in modules and target != name}
    return edges


def test_the_package_has_no_import_cycles():
    edges = graph()

    # a package depends on its own submodules through __init__; that is containment, not a cycle
    def depends(a, b):
        return b in edges[a] and not b.startswith(a + ".")

    state: dict[str, str] = {}
    cycles = []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(t for t in edges[node] if depends(node, t)):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_graph_sees_real_imports():
    edges = graph()
    assert "aelab.runs" in edges["aelab.tasks.train"]
    assert "aelab.registry" in edges["aelab.models.autoencoder"]


def test_no_module_outside_the_data_package_names_a_dataset():
    names = ("MNISTLikeDataModule", "torchvision.datasets", "FashionMNIST", "KMNIST", '"MNIST"', "'MNIST'")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "data"):
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(PACKAGE)}: {name}" for name in names if name in text]
    assert offenders == []


def test_entry_points_only_compose_and_call_a_task():
    for task in TASKS:
        script = f"{task}.py"
        tree = ast.parse((REPO / "src" / script).read_text())
        functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
        assert [f.name for f in functions] == ["main"]
        assert len(functions[0].body) == 1, f"{script}: main() should be one call"


def test_the_fast_path_is_one_component_beside_the_core():
    """Chunks, CUDA graphs, manual optimisation and Lightning's private counters live in
    aelab.fast; the train task switches it on and the schema reads its choices, nothing else
    imports it, and the LightningModule reads no private Lightning attribute."""
    importers = {name for name, targets in graph().items() if any(t.startswith("aelab.fast") for t in targets)}
    assert {name for name in importers if not name.startswith("aelab.fast")} == {"aelab.tasks.train", "aelab.config"}
    model = (PACKAGE / "models" / "autoencoder.py").read_text()
    assert "automatic_optimization" not in model and "fit_loop" not in model and "manual_backward" not in model
    private_reads = [
        node.attr
        for node in ast.walk(ast.parse(model))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        # the model's own excepted
        and node.attr not in {"_run_encoder", "_run_decoder", "_evaluate", "_reset", "_logged_splits"}
    ]
    assert private_reads == []

"""Imports point one way: config -> model -> checkpoint/hub -> generation/training -> app. Checked on
the source, every import statement counted, also those inside functions."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tinygpt"


def imports_of(path: Path) -> set[str]:
    """The tinygpt modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tinygpt.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tinygpt":
            if node.module == "tinygpt":  # from tinygpt import card
                found |= {f"tinygpt.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {f"tinygpt.{path.stem}": imports_of(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for module in edges.get(todo.pop(), set()) - seen:
            seen.add(module)
            todo.append(module)
    return seen


def cycles(edges: dict[str, set[str]]) -> list[str]:
    return sorted(module for module in edges if module in reachable(edges, module))


def test_the_walk_sees_function_level_imports_and_finds_a_planted_cycle():
    edges = graph()
    assert "tinygpt.model" in edges["tinygpt.checkpoint"]
    planted = {**edges, "tinygpt.model": edges["tinygpt.model"] | {"tinygpt.checkpoint"}}
    assert "tinygpt.model" in cycles(planted)
    source = "def f():\n    from tinygpt.hub.models import push\n    import tinygpt.data\n"
    tmp = PACKAGE.parent / ".pytest_cache" / "imports_probe.py"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(source)
    assert imports_of(tmp) == {"tinygpt.hub", "tinygpt.data"}


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


def test_the_model_imports_only_the_config_which_imports_nothing_of_ours():
    edges = graph()
    assert edges["tinygpt.model"] == {"tinygpt.config"}
    assert edges["tinygpt.config"] == set()


def test_evaluation_and_training_load_neither_generation_nor_the_cpp_loader():
    edges = graph()
    for module in ("tinygpt.evaluate", "tinygpt.training"):
        assert not reachable(edges, module) & {"tinygpt.generate", "tinygpt.backends", "tinygpt.engine"}

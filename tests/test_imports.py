"""The package's folders are layers, and imports point down them:

    model -> files -> serving -> training -> hub -> web -> (tinygpt/__init__.py, app.py, train.py)

A module imports its own layer and the layers before it, never one after (the model knows nothing of
checkpoints, the decode loop nothing of training, nothing below the page knows Gradio). Checked on
the source, every import statement counted, also those inside functions and in strings run as code
by nobody: an import is an import.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tinygpt"
LAYERS = ["model", "files", "serving", "training", "hub", "web"]  # tinygpt/<layer>/, lowest first
FRONT = {"tinygpt", "tinygpt.evaluate", "tinygpt.generate"}  # the public API and the `python -m` shims
# Third-party packages that belong to one part of the project only: (package, where it may be imported).
CONFINED = {
    "gradio": ("tinygpt/web/", "app.py"),
    "spaces": ("tinygpt/hub/", "app.py"),  # app.py: first of all, on ZeroGPU
    "huggingface_hub.HfApi": ("tinygpt/hub/",),  # uploading: deploying only (reading from the Hub is allowed)
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, known: set[str] | None = None) -> set[str]:
    """Every module a source imports, anywhere in it: `from a.b import c` is a.b.c where that is a
    module of ours (a submodule), else a.b; names imported from huggingface_hub are kept as
    huggingface_hub.NAME so that CONFINED can name one of them."""
    known = modules().keys() if known is None else known
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known or node.module == "huggingface_hub" else node.module)
    return found


def layer_of(module: str) -> int | None:
    """0 for tinygpt.model.*, 1 for tinygpt.files.*, ...; None for a module outside the layers."""
    parts = module.split(".")
    if parts[0] == "tinygpt" and len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """`A imports B` for each import of a later layer's module, or of the front, by a layered module."""
    wrong = []
    for module, imported in sorted(edges.items()):
        if layer_of(module) is None:
            continue
        for other in sorted(imported):
            if not other.startswith("tinygpt"):
                continue
            later = layer_of(other) is None or layer_of(other) > layer_of(module)
            if later and other != "tinygpt":  # `import tinygpt.x.y` names the package first; the walk sees x.y too
                wrong.append(f"{module} imports {other}")
            elif other == "tinygpt" and module != "tinygpt":
                wrong.append(f"{module} imports tinygpt (the public API, above every layer)")
    return wrong


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports_of(path.read_text(encoding="utf-8"), known) for name, path in modules().items()}


def test_every_module_sits_in_a_layer():
    outside = sorted(set(modules()) - FRONT - {f"tinygpt.{layer}" for layer in LAYERS})
    assert [m for m in outside if layer_of(m) is None] == [], f"put these in one of tinygpt/{LAYERS}"


def test_imports_point_down_the_layers():
    assert upward_imports(graph()) == []


def test_a_planted_upward_import_is_found():
    edges = graph()
    assert "tinygpt.model.gpt" in edges["tinygpt.files.checkpoint"]
    # The model layer's tokenizer reaching up for the decode loop's error class:
    planted = {**edges, "tinygpt.model.tokenizer": edges["tinygpt.model.tokenizer"] | {"tinygpt.serving.generate"}}
    assert "tinygpt.model.tokenizer imports tinygpt.serving.generate" in upward_imports(planted)
    # Imports inside functions count, `from package import submodule` names the submodule:
    source = "def f():\n    from tinygpt.hub import space\n    import tinygpt.training.data\n"
    assert imports_of(source) == {"tinygpt.hub.space", "tinygpt.training.data"}
    assert upward_imports({"tinygpt.files.card": {"tinygpt"}}) != []


def test_the_model_layer_imports_nothing_but_itself():
    for module, imported in graph().items():
        if layer_of(module) == 0:
            assert {m for m in imported if m.startswith("tinygpt")} <= set(modules()) - FRONT, module
            assert all(layer_of(m) == 0 for m in imported if m.startswith("tinygpt.")), module


def test_evaluation_and_training_load_neither_generation_nor_the_cpp_loader():
    edges = graph()
    for module in ("tinygpt.training.evaluate", "tinygpt.training.trainer"):
        assert not edges[module] & {"tinygpt.serving.generate", "tinygpt.serving.backends", "tinygpt.serving.engine"}


def test_gradio_spaces_and_uploads_are_imported_only_where_they_belong():
    files = [*sorted(PACKAGE.rglob("*.py")), ROOT / "app.py", ROOT / "train.py"]
    wrong = []
    for path in files:
        where = path.relative_to(ROOT).as_posix()
        for imported in imports_of(path.read_text(encoding="utf-8")):
            for package, allowed in CONFINED.items():
                confined = imported == package or imported.startswith(package + ".")
                if confined and not where.startswith(allowed):
                    wrong.append(f"{where} imports {imported}")
    assert wrong == []

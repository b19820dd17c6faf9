"""The README is a user's document: short, its tables written from docs/results/, its Python example
runnable; no text in the project tells the project's history (dated logs live in docs/experiments/);
app.py stays wiring."""

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import readme_tables

README = ROOT / "README.md"
HISTORY = re.compile(
    r"before this change|as before|this session|was removed|earlier session|previous session|the session before",
    re.IGNORECASE,
)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not a docstring."""
    source = path.read_text(encoding="utf-8")
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        first = getattr(node, "body", [None])[0] if isinstance(getattr(node, "body", None), list) else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            docstrings |= set(range(first.lineno, first.end_lineno + 1))
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines |= set(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


def test_the_readme_is_at_most_300_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


def test_the_readme_tables_are_the_results_json():
    text = README.read_text(encoding="utf-8")
    assert text.count("<!-- table: ") == len(readme_tables.TABLES)
    assert readme_tables.render(text) == text, "run python tools/readme_tables.py"


def test_the_readme_python_example_runs_on_the_public_api_alone():
    (example,) = [block for block in python_blocks(README.read_text(encoding="utf-8")) if "import tinygpt" in block
                  or block.startswith("from tinygpt import")]  # fmt: skip
    imports = [line for line in example.splitlines() if re.match(r"(from|import) ", line)]
    assert imports == ["from tinygpt import complete_text, load_model"]
    result = subprocess.run([sys.executable, "-c", example], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("JULIET:\n") and len(result.stdout) == len("JULIET:\n") + 200 + 1  # print's \n


def test_no_text_in_the_project_tells_its_history():
    documents = [README, *(p for p in (ROOT / "docs").rglob("*.md") if "experiments" not in p.parts)]
    code = [*ROOT.glob("*.py"), *(ROOT / "tinygpt").rglob("*.py"), *(ROOT / "tinygpt").rglob("*.cpp")]
    code += [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tools").glob("*.py")]
    found = [f"{path.relative_to(ROOT)}: {m.group(0)!r}" for path in documents + code
             for m in HISTORY.finditer(path.read_text(encoding="utf-8"))]  # fmt: skip
    assert found == []


def test_app_py_is_wiring_of_at_most_120_code_lines():
    assert code_lines(ROOT / "app.py") <= 120

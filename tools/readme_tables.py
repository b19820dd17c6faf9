"""The README's result tables, written from the benchmarks' JSON in docs/results/: one home per figure.

    python tools/readme_tables.py           # rewrite the tables in README.md
    python tools/readme_tables.py --check   # exit 1 if a table differs from its JSON (tests/test_readme.py)

Each table sits between `<!-- table: NAME -->` and `<!-- end table -->`; NAME is a function below,
which reads docs/results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- table: (\w+) -->\n)(.*?)(<!-- end table -->)", re.DOTALL)


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def rows(header: list[str], body: list[list[object]]) -> str:
    lines = [header, ["---"] * len(header), *body]
    return "".join("| " + " | ".join(str(cell) for cell in line) + " |\n" for line in lines)


def quality() -> str:
    result = load("quality")
    ours, vocab = result["weights"], result["weights"]["vocab_size"]
    uniform = math.log(vocab)
    body = [
        ["`weights/`", f"{ours['val_loss']:.4f}", f"{ours['bpc']:.4f}", f"{ours['params'] / 1e6:.2f}M",
         ours["training"], result["hardware"]],
        *([ref["name"], f"{ref['val_loss']:.4f}", f"{ref['bpc']:.3f}", f"{ref['params'] / 1e6:.2f}M", ref["training"],
           ref["hardware"]] for ref in result["references"]),
        [f"a uniform guess over {vocab} characters", f"{uniform:.4f}", f"{uniform / math.log(2):.4f}", "-", "-", "-"],
    ]  # fmt: skip
    return rows(["model", "validation loss (nats/char)", "bpc", "parameters", "training", "hardware"], body)


def generate() -> str:
    result = load("generate")
    naive = result["naive_chars_per_s"]
    body = [
        ["the seed's `GPT.generate` (the whole window per character)", naive],
        ["the decode loop on `torch` (float32, KV cache)", result["torch"]["chars_per_s"]],
        ["the decode loop on `int8` (int8 weights)", result["int8"]["chars_per_s"]],
        ["the decode loop on `cpp` (the C++ step, int8 KV cache)", result["cpp"]["chars_per_s"]],
        ["one request through the page's batching engine (`cpp`)", result["engine"]["chars_per_s"]],
        [f"transformers {result['transformers_version']} `GPT2LMHeadModel.generate`, same shape",
         result["transformers_chars_per_s"]],
    ]  # fmt: skip
    body = [[what, f"{speed:.1f}", f"{speed / naive:.1f}x"] for what, speed in body]
    return rows(["one sequence, 2 threads", "characters/s", "vs the seed's"], body)


def load_table() -> str:
    result = load("load")
    body = []
    pages = [("batched", "as shipped (`--max-batch 32`)"), ("batching_off", "one at a time (`--max-batch 1`)")]
    for name, what in pages:
        page = result["pages"][name]
        latency = " / ".join(f"{page['latency_s'][q]:.2f}" for q in ("p50", "p95", "max"))
        body.append([what, f"{page['completed']} of {page['completed'] + page['errors']}", page["errors"],
                     f"{latency} s", f"{page['chars_per_s']:,}"])  # fmt: skip
    return rows(["the page", "completed", "errors", "latency p50 / p95 / max", "characters/s"], body)


def train_budget() -> str:
    result = load("train_budget")
    body = [[f"{run['minutes']:g} min", f"**{run['ours']['val_loss']:.4f}**", f"{run['baseline']['val_loss']:.4f}",
             f"{run['ours']['steps']} / {run['baseline']['steps']}"] for run in result["runs"]]  # fmt: skip
    return rows(["budget", "`train.py --minutes M`", "nanoGPT's CPU recipe, same budget", "steps, ours / nanoGPT's"],
                body)  # fmt: skip


TABLES = {"quality": quality, "generate": generate, "load": load_table, "train_budget": train_budget}


def render(text: str) -> str:
    """`text` with every table block rewritten from its JSON."""
    return BLOCK.sub(lambda m: m.group(1) + TABLES[m.group(2)]() + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if README.md differs")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    rendered = render(text)
    if args.check:
        if rendered != text:
            print("README.md's tables differ from docs/results/: run python tools/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

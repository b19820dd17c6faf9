"""Mutation check of the test suite: plant one plausible bug at a time in a copy of the tree, run the
tests that should catch it, and report which bugs the tests let through.

    python tools/mutants.py                  # every mutant (several minutes)
    python tools/mutants.py int8 resume      # only mutants whose name contains one of these words
    python tools/mutants.py --list

A developer tool, not part of CI. Each mutant is a set of exact text replacements; when the code has
moved and a replacement's text is not found exactly once (in its file, or else in any one source
file), the mutant is "not applicable" and the rest still run. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["tinygpt/**/*.py", "tinygpt/**/*.cpp", "*.py", "README.md"]  # where moved code is looked for
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".torch_ext", "runs")
TIMEOUT_S = 900


class Mutant(NamedTuple):
    name: str
    file: str  # where the code is today; other source files are searched if it has moved
    edits: list[tuple[str, str]]  # (old, new): each old text must occur exactly once
    tests: list[str]  # pytest arguments: the tests that should catch it


MUTANTS = [
    # The six bugs issue 18 found surviving.
    Mutant("int8 linear returns zeros", "tinygpt/files/quantize.py",
           [("        return y if self.bias is None else y + self.bias",
             "        y = torch.zeros_like(y)\n        return y if self.bias is None else y + self.bias")],
           ["tests/test_oracles.py", "-k", "int8"]),
    Mutant("grad accumulation without dividing the loss", "tinygpt/training/trainer.py",
           [("scaler.scale(loss / config.grad_accum).backward()", "scaler.scale(loss).backward()")],
           ["tests/test_oracles.py", "-k", "accumulates"]),
    Mutant("empty weight-decay group", "tinygpt/model/gpt.py",
           [('if p.dim() >= 2 and "embedding" not in n]', 'if p.dim() > 2 and "embedding" not in n]'),
            ('if p.dim() < 2 or "embedding" in n]', 'if p.dim() <= 2 or "embedding" in n]')],
           ["tests/test_oracles.py", "-k", "weight_decay"]),
    Mutant("weight decay on the embeddings", "tinygpt/model/gpt.py",
           [('if p.dim() >= 2 and "embedding" not in n]', "if p.dim() >= 2]"),
            ('if p.dim() < 2 or "embedding" in n]', "if p.dim() < 2]")],
           ["tests/test_oracles.py", "-k", "weight_decay"]),
    Mutant("weight average's step inverted", "tinygpt/training/trainer.py",
           [("averaged.lerp_(current, weight)", "averaged.lerp_(current, 1 - weight)")],
           ["tests/test_oracles.py", "-k", "weight_average"]),
    Mutant("trim_log keeps every record", "tinygpt/training/trainer.py",
           [('if record["step"] <= step and "final" not in record:', "if True:")],
           ["tests/test_oracles.py", "-k", "log"]),
    Mutant("torchrun without DDP", "tinygpt/training/trainer.py",
           [("self.trained = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model",
             "self.trained = self.model")],
           ["tests/test_training.py", "-k", "torchrun"]),
    Mutant("torchrun ranks all draw the same batches", "tinygpt/training/trainer.py",
           [("manual_seed(config.seed + self.rank)", "manual_seed(config.seed)")],
           ["tests/test_training.py", "-k", "torchrun"]),
    Mutant("DDP synchronises the wrong micro-batch", "tinygpt/training/trainer.py",
           [("if distributed and not last_micro else", "if distributed and last_micro else")],
           ["tests/test_training.py", "-k", "torchrun"]),
    # The loose ends it listed.
    Mutant("README val loss off by 3e-4", "README.md",
           [("| `weights/` | 1.4194 |", "| `weights/` | 1.4197 |")],
           ["tests/test_evaluate.py", "-k", "readme"]),
    Mutant("README bpc off", "README.md",
           [("| `weights/` | 1.4194 | 2.0478 |", "| `weights/` | 1.4194 | 2.0491 |")],
           ["tests/test_evaluate.py", "-k", "readme"]),
    Mutant("README parameter count off", "README.md",
           [("| `weights/` | 1.4194 | 2.0478 | 4.83M |", "| `weights/` | 1.4194 | 2.0478 | 4.85M |")],
           ["tests/test_evaluate.py", "-k", "readme"]),
    Mutant("generation runs to the end before streaming (Stop cannot stop it)", "tinygpt/web/page.py",
           [("            async for tokens in stream:\n",
             "            for tokens in [batch async for batch in stream]:\n")],
           ["tests/test_serving.py", "-k", "cancel"]),
    Mutant("Stop button wired to nothing", "tinygpt/web/page.py",
           [("stop.click(None, cancels=[event])", "stop.click(None)")],
           ["tests/test_app.py", "-k", "stop"]),
    Mutant("batched rows share the first row's random generator", "tinygpt/serving/generate.py",
           [("[s.next_uniform() if s.temperature else 0.0 for s in self.sequences]",
             "[self.sequences[0].next_uniform() if s.temperature else 0.0 for s in self.sequences]")],
           ["tests/test_engine.py", "-k", "alone"]),
    Mutant("a leaving sequence's cache row is not handed over", "tinygpt/serving/generate.py",
           [("            self.cache.copy_row(last, row)\n", "")],
           ["tests/test_engine.py", "tests/test_decoding.py", "-k", "cancel or join"]),
    Mutant("a leaving sequence's logits row moved in place", "tinygpt/serving/generate.py",
           [("            order[row] = last\n",
             "            order[row] = last\n            self.logits[row] = self.logits[last]\n")],
           ["tests/test_decoding.py", "-k", "keeps_the_logits"]),
    Mutant("an int8 cache's scales stay behind when a row moves", "tinygpt/model/gpt.py",
           [("        for t in (self.k, self.v, self.k_scale, self.v_scale):\n            if t is not None:\n"
             "                t[:, target] = t[:, source]",
             "        for t in (self.k, self.v):\n            t[:, target] = t[:, source]")],
           ["tests/test_model.py", "tests/test_engine.py", "tests/test_decoding.py"]),
    Mutant("the C++ step truncates keys and values to int8", "tinygpt/serving/csrc/decode.cpp",
           [("std::nearbyint(src[i] / scale)", "std::trunc(src[i] / scale)")],
           ["tests/test_backends.py", "-k", "ragged"]),
    Mutant("a closed request keeps decoding", "tinygpt/serving/engine.py",
           [("            self._waiter = None\n            self.cancelled = True", "            self._waiter = None")],
           ["tests/test_app.py", "-k", "closing"]),
    Mutant("resume validation skipped", "tinygpt/files/checkpoint.py",
           [("    _check_training_tensors(path, tensors, optimizer, models)\n", "")],
           ["tests/test_resume_errors.py"]),
    # More plausible bugs.
    Mutant("attention not causal", "tinygpt/model/gpt.py",
           [("y = F.scaled_dot_product_attention(q, k, v, is_causal=True)",
             "y = F.scaled_dot_product_attention(q, k, v, is_causal=False)")],
           ["tests/test_model.py", "tests/test_decoding.py"]),
    Mutant("KV cache position off by one", "tinygpt/serving/generate.py",
           [("positions = torch.tensor([s.cached for s in self.sequences])",
             "positions = torch.tensor([s.cached - 1 for s in self.sequences])")],
           ["tests/test_decoding.py"]),
    Mutant("cached positions ignore input_pos", "tinygpt/model/gpt.py",
           [("else input_pos.to(idx.device)[:, None] + steps", "else steps.expand(B, T)")],
           ["tests/test_decoding.py"]),
    Mutant("temperature multiplies", "tinygpt/model/gpt.py",
           [("keepdim=True)) / temperature", "keepdim=True)) * temperature")],
           ["tests/test_decoding.py"]),
    Mutant("top-p drops the token that reaches p", "tinygpt/model/gpt.py",
           [("drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p",
             "drop_sorted = sorted_probs.cumsum(dim=-1) >= top_p")],
           ["tests/test_decoding.py"]),
    Mutant("top-k keeps k - 1", "tinygpt/model/gpt.py",
           [("logits.masked_fill(logits < kth_largest", "logits.masked_fill(logits <= kth_largest")],
           ["tests/test_decoding.py"]),
    Mutant("fast window re-prefills a quarter", "tinygpt/serving/generate.py",
           [("keep = self.config.block_size // 2", "keep = self.config.block_size // 4")],
           ["tests/test_decoding.py"]),
    Mutant("split fraction 0.8", "tinygpt/training/data.py",
           [("TRAIN_FRACTION = 0.9", "TRAIN_FRACTION = 0.8")],
           ["tests/test_training.py", "-k", "split"]),
    Mutant("warmup starts at step 1", "tinygpt/training/trainer.py",
           [("config.learning_rate * (step + 1) / config.warmup_iters",
             "config.learning_rate * step / config.warmup_iters")],
           ["tests/test_training.py", "-k", "learning_rate"]),
    Mutant("learning-rate schedule never reaches the optimizer", "tinygpt/training/trainer.py",
           [('        for group in self.optimizer.param_groups:\n            group["lr"] = lr\n', "")],
           ["tests/test_oracles.py", "-k", "first_step"]),
    Mutant("gradient clipping skipped", "tinygpt/training/trainer.py",
           [("if config.grad_clip > 0:", "if config.grad_clip < 0:")],
           ["tests/test_oracles.py", "-k", "accumulates"]),
    Mutant("resume does not restore the batch sampler", "tinygpt/files/checkpoint.py",
           [('    generator.set_state(tensors["rng.batches"])\n', "")],
           ["tests/test_training.py", "-k", "resumes"]),
    Mutant("the last step's weights shipped instead of the average", "tinygpt/training/trainer.py",
           [("return self.average.model if self.average else self.model", "return self.model")],
           ["tests/test_training.py", "-k", "weight_average"]),
    Mutant("int8 scale off by 2x", "tinygpt/files/quantize.py",
           [('"scales", scales.to(torch.bfloat16))', '"scales", (2 * scales).to(torch.bfloat16))')],
           ["tests/test_oracles.py", "-k", "int8"]),
    Mutant("validation loss divides by one too many", "tinygpt/training/evaluate.py",
           [("loss = total / n_targets", "loss = total / (n_targets + 1)")],
           ["tests/test_evaluate.py", "-k", "window"]),
    Mutant("the page's sessions built by Gradio, every component's configuration each",
           "tinygpt/web/session_state_patch.py",
           [("if blocks in _lean_pages else", "if blocks not in _lean_pages else")],
           ["tests/test_gradio_sessions.py"]),
    Mutant("lean sessions share one configuration dict", "tinygpt/web/session_state_patch.py",
           [("    _gradio_init(session, _WithoutComponents(blocks) if blocks in _lean_pages else blocks)\n",
             "    _gradio_init(session, _WithoutComponents(blocks) if blocks in _lean_pages else blocks)\n"
             "    if blocks in _lean_pages:\n        session.config_values = _SHARED\n"),
            ("_gradio_init = state_holder", "_SHARED: dict = {}\n_gradio_init = state_holder")],
           ["tests/test_gradio_sessions.py"]),
    Mutant("Gradio summarises every finished request again", "app.py",
           [('"GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000000"', '"GRADIO_ANALYTICS_CACHE_FREQUENCY", "1"')],
           ["tests/test_app.py", "-k", "summarise"]),
    Mutant("a trace keeps a view into the engine's whole batch of logits", "tinygpt/web/inside.py",
           [("self.logits.append(torch.stack(logits))", "self.logits.append(logits[0][None] if len(logits) == 1 "
             "else torch.stack(logits))")],
           ["tests/test_app.py", "-k", "trace"]),
    Mutant("attention (head size 64) sums the wrong halves of its scores", "tinygpt/serving/csrc/decode.cpp",
           [("pairs[2 * i + 1], 0xEE)", "pairs[2 * i + 1], 0xEB)")],
           ["tests/test_backends.py"]),
    Mutant("the end does not wake a reader that is pausing between updates", "tinygpt/serving/engine.py",
           [("        self._wake(by_tokens=False)\n", "")],
           ["tests/test_engine.py", "-k", "paced"]),
    Mutant("new characters do not wake a waiting reader (it hears only the end)", "tinygpt/serving/engine.py",
           [("if waiter is None or (by_tokens and not waiter[2]):", "if waiter is None or by_tokens:")],
           ["tests/test_serving.py", "-k", "cancel"]),
    Mutant("a helper thread of the C++ step computes the caller's part instead of its own",
           "tinygpt/serving/csrc/decode.cpp",
           [("if (part < parts_) (*job_)(part);", "if (part < parts_) (*job_)(part - 1);")],
           ["tests/test_backends.py"]),
    Mutant("a prompt's rows attend before the other threads stored their keys", "tinygpt/serving/csrc/decode.cpp",
           [("out, [&] { layer.wait(); });", "out, [] {});")],
           ["tests/test_backends.py", "-k", "split"]),
    Mutant("long prompts go back to PyTorch", "tinygpt/serving/backends.py",
           [("        return self.decoder.step(", "        if tokens.size(1) > 64:\n"
             "            return TorchBackend(self.model, cache_dtype=self.cache_dtype)(tokens, input_pos, cache)\n"
             "        return self.decoder.step(")],
           ["tests/test_backends.py", "-k", "one_cpp_call"]),
    Mutant("the page runs PyTorch on every CPU beside the C++ step", "app.py",
           [("torch.set_num_threads(1 if compile_later else cpus)", "torch.set_num_threads(cpus)")],
           ["tests/test_serving.py", "-k", "thread_per_cpu"]),
    Mutant("the page's C++ step gets one thread", "tinygpt/serving/server.py",
           [("    backend = CppBackend(model, threads)\n", "    backend = CppBackend(model, 1)\n")],
           ["tests/test_serving.py", "-k", "thread_per_cpu"]),
    # Issue 33: the engine, the Train tab, the budget schedule, the int8 cache's scaling, the concurrency limits.
    Mutant("a joining sequence is prefilled into the first row", "tinygpt/serving/generate.py",
           [("self._prefill(len(self.sequences) - 1, sequence.tokens)", "self._prefill(0, sequence.tokens)")],
           ["tests/test_engine.py", "-k", "joining"]),
    Mutant("a joining sequence's next position is one too far", "tinygpt/serving/generate.py",
           [("        sequence.cached = len(sequence.tokens)\n",
             "        sequence.cached = len(sequence.tokens) + 1\n")],
           ["tests/test_engine.py", "-k", "joining"]),
    Mutant("a freed row is not reused (the engine admits by the most it ever ran)", "tinygpt/serving/engine.py",
           [("while self._waiting and len(self._active) + len(joining) < self.max_batch:",
             "while self._waiting and self.most_running + len(joining) < self.max_batch:")],
           ["tests/test_engine.py", "-k", "frees_its_row_for"]),
    Mutant("every row sampled with the first sequence's settings", "tinygpt/serving/generate.py",
           [("settings = [(s.temperature, s.top_k, s.top_p) for s in self.sequences]",
             "first = self.sequences[0]\n        settings = [(first.temperature, first.top_k, first.top_p)] * "
             "len(self.sequences)")],
           ["tests/test_engine.py", "-k", "alone"]),
    Mutant("each row samples with another row's random number", "tinygpt/serving/generate.py",
           [("[s.next_uniform() if s.temperature else 0.0 for s in self.sequences]",
             "[s.next_uniform() if s.temperature else 0.0 for s in self.sequences][::-1]")],
           ["tests/test_engine.py", "-k", "alone"]),
    Mutant("rows sharing settings share the first one's random number", "tinygpt/serving/generate.py",
           [("u = torch.tensor([uniforms[row] for row in rows]",
             "u = torch.tensor([uniforms[rows[0]] for row in rows]")],
           ["tests/test_engine.py", "-k", "alone"]),
    Mutant("one session's model visible to another", "tinygpt/training/playground.py",
           [("            return self.models.get(session)\n",
             "            return self.models.get(session) or next(iter(self.models.values()), None)\n")],
           ["tests/test_train_tab.py", "-k", "freed_on_drop"]),
    Mutant("the upload limit off by a factor of two", "tinygpt/training/playground.py",
           [("    if size > MAX_UPLOAD_BYTES:", "    if size > 2 * MAX_UPLOAD_BYTES:")],
           ["tests/test_train_tab.py", "-k", "uploads"]),
    Mutant("the page hands Gradio the upload limit in kilobytes", "app.py",
           [("max_file_size=training.max_upload_bytes if training", "max_file_size=training.max_upload_bytes * 1024 if "
             "training")],
           ["tests/test_crowd.py", "-k", "refuses_an_upload"]),
    Mutant("two trainings at once: the second visitor skips the queue", "tinygpt/web/train_tab.py",
           [("concurrency_limit=1, concurrency_id=TRAIN_GROUP", "concurrency_limit=2, concurrency_id=TRAIN_GROUP")],
           ["tests/test_crowd.py", "-k", "different_limits"]),
    Mutant("a training whose page closed runs on to its end", "tinygpt/training/playground.py",
           [("        if job:\n            job.abandon()", "        if job:\n            job.stop()")],
           ["tests/test_crowd.py", "-k", "visitor_leaves and page"]),
    Mutant("a training whose stream dropped is left to finish", "tinygpt/web/train_tab.py",
           [("                job.abandon()\n            job.close()",
             "                pass\n            job.close()")],
           ["tests/test_crowd.py", "-k", "visitor_leaves and stream"]),
    Mutant("a left training's folder stays on disk", "tinygpt/web/train_tab.py",
           [("            if not kept:\n                shutil.rmtree(folder, ignore_errors=True)", "")],
           ["tests/test_crowd.py", "-k", "visitor_leaves"]),
    Mutant("the page's unload frees nothing", "tinygpt/web/train_tab.py",
           [("        handlers.forget(request.session_hash)\n", "        pass\n")],
           ["tests/test_crowd.py", "-k", "visitor_leaves and page"]),
    Mutant("/generate_trained in the Write tab's group, one at a time (issue 33)", "tinygpt/web/train_tab.py",
           [("concurrency_limit=TRAINED_GENERATIONS, concurrency_id=TRAINED_GROUP)",
             'concurrency_limit=1, concurrency_id="model")')],
           ["tests/test_crowd.py", "-k", "generating_together"]),
    Mutant("the trained models' group named as the Write tab's", "tinygpt/web/train_tab.py",
           [('TRAINED_GROUP = "trained_model"', 'TRAINED_GROUP = "model"')],
           ["tests/test_crowd.py", "-k", "different_limits"]),
    Mutant("Write runs one at a time in the group /generate shares", "app.py",
           [("            concurrency_limit=engine.max_batch,\n            concurrency_id=\"model\",",
             "            concurrency_limit=1,\n            concurrency_id=\"model\",")],
           ["tests/test_crowd.py", "-k", "different_limits"]),
    Mutant("/held queued in the Write tab's group", "tinygpt/web/held.py",
           [('api_visibility="private", concurrency_limit=None)',
             'api_visibility="private", concurrency_limit=None, concurrency_id="model")')],
           ["tests/test_crowd.py", "-k", "different_limits"]),
    Mutant("the learning rate's decay ends at half the run", "tinygpt/training/trainer.py",
           [("math.cos(math.pi * min(progress, 1.0))", "math.cos(math.pi * min(2 * progress, 1.0))")],
           ["tests/test_training.py", "-k", "learning_rate"]),
    Mutant("the warmup ignored", "tinygpt/training/trainer.py",
           [("    if step < config.warmup_iters:", "    if step < 0:")],
           ["tests/test_training.py", "-k", "learning_rate"]),
    Mutant("a budget's clock runs out at half time", "tinygpt/training/trainer.py",
           [("by_clock = self.elapsed / (60 * config.minutes)", "by_clock = self.elapsed / (30 * config.minutes)")],
           ["tests/test_training.py", "-k", "progress_is"]),
    Mutant("a budget's preset picked on a linear scale", "tinygpt/model/config.py",
           [("abs(math.log(budget / minutes))", "abs(budget - minutes)")],
           ["tests/test_any_text.py", "-k", "nearest"]),
    Mutant("an int8 cache's scale is the largest magnitude over 128", "tinygpt/model/gpt.py",
           [("scale = (x.abs().amax(-1) / 127)", "scale = (x.abs().amax(-1) / 128)")],
           ["tests/test_model.py", "-k", "int8_cache"]),
    Mutant("an int8 cache truncates instead of rounding", "tinygpt/model/gpt.py",
           [("(x / scale[..., None]).round()", "(x / scale[..., None]).trunc()")],
           ["tests/test_model.py", "-k", "int8_cache"]),
    Mutant("an int8 cache loads every vector with the first one's scale", "tinygpt/model/gpt.py",
           [("x.float() * scale[..., None]", "x.float() * scale[..., :1, None]")],
           ["tests/test_model.py", "-k", "int8_cache"]),
    Mutant("the C++ step's scale is the largest magnitude over 128", "tinygpt/serving/csrc/decode.cpp",
           [("std::max(top / 127.f, FLT_MIN)", "std::max(top / 128.f, FLT_MIN)")],
           ["tests/test_backends.py", "-k", "ragged"]),
    Mutant("the C++ step (head size 64) weighs a value with its neighbour's scale", "tinygpt/serving/csrc/decode.cpp",
           [("scores[t + 1] * v_scale[t + 1])", "scores[t + 1] * v_scale[t])")],
           ["tests/test_backends.py"]),
]  # fmt: skip


def locate(tree: Path, mutant: Mutant) -> tuple[Path, str] | str:
    """The file the edits apply to and its mutated text, or why the mutant does not apply."""
    candidates = [tree / mutant.file, *sorted(p for pattern in SOURCES for p in tree.glob(pattern))]
    for path in dict.fromkeys(candidates):
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if all(text.count(old) == 1 for old, _ in mutant.edits):
            for old, new in mutant.edits:
                text = text.replace(old, new)
            return path, text
    return "not applicable (code not found)"


def first_failure(output: str) -> str:
    """The test that failed first, from pytest's short summary (FAILED/ERROR lines)."""
    match = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, re.MULTILINE)
    return match.group(1) if match else "?"


def run(tree: Path, mutant: Mutant, env: dict[str, str]) -> dict:
    found = locate(tree, mutant)
    if isinstance(found, str):
        return {"mutant": mutant.name, "result": found, "test": ""}
    path, mutated = found
    original = path.read_text(encoding="utf-8")
    path.write_text(mutated, encoding="utf-8")
    if path.suffix == ".cpp":  # a fresh build folder, so the planted C++ is compiled and used
        env = {**env, "TORCH_EXTENSIONS_DIR": tempfile.mkdtemp(prefix="mutant_ext_")}
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        code, output = -1, ""
    finally:
        path.write_text(original, encoding="utf-8")
        if path.suffix == ".cpp":
            shutil.rmtree(env["TORCH_EXTENSIONS_DIR"], ignore_errors=True)
    result = {0: "SURVIVED", 1: "caught", -1: f"timed out after {TIMEOUT_S} s"}.get(code, f"error (pytest exit {code})")
    test = first_failure(output) if code == 1 else ""
    return {"mutant": mutant.name, "result": result, "test": test, "seconds": round(time.perf_counter() - started)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("words", nargs="*", help="run only mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.words or any(w.lower() in m.name.lower() for w in args.words)]
    if args.list:
        for m in chosen:
            print(f"{m.name:70} {m.file:24} {' '.join(m.tests)}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants_") as tmp:
        tree = Path(shutil.copytree(ROOT, Path(tmp) / "tree", ignore=SKIP))
        # The C++ step is built once for the copy (the first mutant's tests wait ~1 minute for it).
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TORCH_EXTENSIONS_DIR": str(Path(tmp) / "ext")}
        print(f"{'mutant':68} {'result':26} caught by", flush=True)
        for mutant in chosen:
            results.append(run(tree, mutant, env))
            r = results[-1]
            print(f"{r['mutant']:68} {r['result']:26} {r['test']}", flush=True)
    survived = [r["mutant"] for r in results if r["result"] == "SURVIVED"]
    caught = sum(r["result"] == "caught" for r in results)
    print(json.dumps({"mutants": len(results), "caught": caught, "survived": survived, "results": results}))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: a tiny model (a few thousand parameters) so every test runs in milliseconds."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import RepoUrl

from tinygpt.files.checkpoint import save_model
from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving import backends
from tinygpt.training.data import load_text

ROOT = Path(__file__).resolve().parent.parent

# The test models are tiny: one thread runs them fastest, and never waits on a busy second core.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def cpp_decode_step() -> None:
    """Build the C++ decode step (if it can be) before any test starts app.py, which would build it."""
    backends.extension()


@pytest.fixture(scope="session")
def corpus() -> str:
    return load_text(DEFAULT_DATA)


@pytest.fixture(scope="session")
def tokenizer(corpus: str) -> CharTokenizer:
    return CharTokenizer.from_text(corpus)


@pytest.fixture
def tiny_config(tokenizer: CharTokenizer) -> GPTConfig:
    return GPTConfig(vocab=tokenizer.vocab, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


@pytest.fixture
def tiny_model(tiny_config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture
def sharp_model(tiny_config: GPTConfig) -> GPT:
    """The tiny model with its weights scaled up: far from the near-uniform initial distribution, so
    the sampled text depends on every logit, and a wrong computation changes it."""
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory, tokenizer: CharTokenizer) -> Path:
    """A folder holding a saved tiny model, for the command-line and app tests."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab=tokenizer.vocab, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    out = tmp_path_factory.mktemp("weights")
    save_model(model, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(weights: Path, log: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """Start `python app.py` on a free port (with `options`), its output going to `log`; returns (process, URL)."""
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(weights), *options]
    return launch(command, ROOT, {**os.environ, "PYTHONUNBUFFERED": "1"}, port, log)


def launch(
    command: list[str], cwd: Path, env: dict, port: int, log: Path, timeout_s: float = 90
) -> tuple[subprocess.Popen, str]:
    """Start a server and wait until it listens on `port`; returns (process, URL).

    Its output goes to a file, not a pipe: an unread pipe fills up once the server has logged ~64 KB,
    and then the server blocks on its next write (every request hangs).
    """
    with log.open("w") as out:  # the child keeps its own handle
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}/"
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"{command[1]} exited early:\n{log.read_text()}")
            time.sleep(0.5)
    stop_app(process)
    pytest.fail(f"{command[1]} did not start listening within {timeout_s:.0f} s:\n{log.read_text()}")


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def served(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """`python app.py` as a user would start it, on a free port: (URL, its log); stopped by PID at the end."""
    log = tmp_path_factory.mktemp("app") / "app.log"
    process, url = start_app(tiny_weights, log)
    yield url, log
    stop_app(process)


@pytest.fixture(scope="session")
def server(served: tuple[str, Path]) -> str:
    return served[0]


def tiny_recipe(minutes: float) -> GPTConfig:
    """The Train tab's recipe for tests: a model small enough to learn something in seconds on one thread."""
    return GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32, batch_size=16, learning_rate=1e-2, min_lr=1e-3,
                     warmup_iters=5, weight_decay=0.0, ema_decay=0.0, dtype="float32", max_iters=0,
                     minutes=minutes, eval_interval=1_000_000, eval_iters=2)  # fmt: skip


@pytest.fixture(scope="session")
def train_server(tmp_path_factory: pytest.TempPathFactory):
    """A page with only the Train tab, training `tiny_recipe` for 0.05 to 0.5 minutes, served in this
    process; yields (URL, the VisitorModels it keeps the trained models in)."""
    import gradio as gr

    from tinygpt.training.playground import VisitorModels
    from tinygpt.web.train_tab import TrainSettings, build_train_tab

    models = VisitorModels(tmp_path_factory.mktemp("visitor-models"))
    with gr.Blocks() as demo, gr.Tab("Train"):
        build_train_tab(demo, TrainSettings(0.05, 0.5, tiny_recipe), models)
    demo.queue()
    _, url, _ = demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, models
    demo.close()
    models.close()


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub.HfApi's network calls, recorded instead of made."""
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        calls["upload_folder"] = {"repo_id": repo_id, "folder_path": Path(folder_path), "files": files, **kwargs}
        return f"https://huggingface.co/{repo_id}/commit/0123456789abcdef0123456789abcdef01234567"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


_loops = threading.local()


def read(stream: AsyncIterator) -> Iterator:
    """An async iterator (the engine's streams, the page's handlers) as a plain one, stepped on this
    thread's own event loop as Gradio's would step it; closing it closes the stream."""
    if not hasattr(_loops, "loop"):
        _loops.loop = asyncio.new_event_loop()
    loop = _loops.loop
    try:
        while True:
            try:
                item = loop.run_until_complete(anext(stream))
            except StopAsyncIteration:
                return
            yield item
    finally:
        loop.run_until_complete(stream.aclose())

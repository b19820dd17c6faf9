"""Shared fixtures: a tiny model (a few thousand parameters) so every test runs in milliseconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinygpt.checkpoint import save_model
from tinygpt.config import GPTConfig
from tinygpt.data import DEFAULT_DATA, load_text
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture(scope="session")
def server(tiny_weights):
    """`python app.py` as a user would start it, on a free port; stopped by PID at the end."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(tiny_weights)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"app.py exited early:\n{process.stdout.read()}")
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("app.py did not start listening within 90 s")
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()

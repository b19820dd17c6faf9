"""Shared fixtures: a tiny model (a few thousand parameters) so every test runs in milliseconds."""

from __future__ import annotations

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

import json
import math
import re
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT
from tinygpt.files.checkpoint import load_model
from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.model.config import GPTConfig
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.training.data import load_splits
from tinygpt.training.evaluate import validation_loss


@pytest.mark.parametrize("length", [1 + 16 * 5, 1 + 16 * 5 + 7, 10])  # whole windows, a short last one, only one
def test_validation_loss_scores_every_character_once_window_by_window(tiny_model, length):
    ids = torch.randint(tiny_model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(0))
    result = validation_loss(tiny_model, ids, batch_size=2)
    # Reference: one window at a time, each character predicted from those before it in its window.
    total = 0.0
    for start in range(0, length - 1, 16):
        window = ids[start : min(start + 17, length)]
        logits, _ = tiny_model(window[:-1].unsqueeze(0))
        total += F.cross_entropy(logits[0], window[1:], reduction="sum").item()
    assert result["chars"] == length - 1
    assert result["val_loss"] == pytest.approx(total / (length - 1), abs=1e-5)
    assert result["bpc"] == pytest.approx(result["val_loss"] / math.log(2), abs=1e-5)
    assert validation_loss(tiny_model, ids, batch_size=3) == result  # batching never changes the figure


def test_a_cache_of_float32_scores_the_same_and_float16_or_int8_a_little_differently(sharp_model):
    ids = torch.randint(sharp_model.config.vocab_size, (1 + 16 * 6,), generator=torch.Generator().manual_seed(0))
    exact = validation_loss(sharp_model, ids)["val_loss"]
    assert validation_loss(sharp_model, ids, cache_dtype=torch.float32)["val_loss"] == pytest.approx(exact, abs=2e-5)
    for dtype, within in [(torch.float16, 1e-3), (torch.int8, 1e-2)]:
        rounded = validation_loss(sharp_model, ids, cache_dtype=dtype)["val_loss"]
        assert rounded != exact and rounded == pytest.approx(exact, rel=within)  # keys and values were rounded


def test_evaluate_cli_prints_one_json_line(tiny_weights, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(DEFAULT_DATA.read_text()[:20_000])
    command = [sys.executable, "-m", "tinygpt.evaluate", "--weights", str(tiny_weights), "--data", str(data)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["chars"] == 2_000 - 1 and 0 < report["val_loss"] < 6 and report["block_size"] == 16


def test_evaluate_cli_names_characters_the_model_does_not_know(tiny_weights, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("numbers 12345 " * 100)
    command = [sys.executable, "-m", "tinygpt.evaluate", "--weights", str(tiny_weights), "--data", str(data)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "'1'" in result.stderr and "Traceback" not in result.stderr


def as_printed(value: float, figure: str) -> str:
    """`value` with as many decimals as `figure` has: a figure is right when it is the value rounded."""
    return f"{value:.{len(figure.partition('.')[2])}f}"


def test_shipped_weights_evaluate_to_the_figures_in_the_readme():
    row = r"^\| `weights/` \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+)M \|"
    match = re.search(row, (ROOT / "README.md").read_text(), re.MULTILINE)
    assert match, "README's results table has no row for weights/ (val loss, bpc, parameters)"
    loss, bpc, millions = match.groups()
    model = load_model(ROOT / "weights")
    assert model.config.block_size >= 256
    _, _, val_ids = load_splits(DEFAULT_DATA, CharTokenizer(model.config.vocab))
    result = validation_loss(model, val_ids)
    assert as_printed(result["val_loss"], loss) == loss and len(loss) >= 6  # to the 4 decimals stated
    assert as_printed(result["bpc"], bpc) == bpc
    assert as_printed(model.num_params() / 1e6, millions) == millions


def test_shipped_weights_were_trained_with_the_default_recipe():
    """`python train.py` (no flags) is what made weights/: its config.json holds the defaults."""
    shipped = load_model(ROOT / "weights").config
    defaults = GPTConfig(vocab=shipped.vocab)
    assert asdict(shipped) == asdict(defaults)

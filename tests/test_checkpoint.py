import json
import re

import torch

from tests.conftest import ROOT
from tinygpt.checkpoint import load_model, load_training_state, save_model, save_training_state
from tinygpt.config import GPTConfig
from tinygpt.model import GPT


def test_save_load_round_trip_gives_identical_logits(tiny_model, tiny_config, tmp_path):
    save_model(tiny_model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["vocab"] == tiny_config.vocab and stored["n_layer"] == 2
    loaded = load_model(tmp_path)
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    assert torch.equal(tiny_model(idx)[0], loaded(idx)[0])
    assert not loaded.training


def test_config_ignores_unknown_keys(tmp_path, tiny_config):
    tiny_config.save(tmp_path / "config.json")
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "added_in_a_later_version": 1}))
    assert GPTConfig.load(tmp_path / "config.json") == tiny_config


def test_training_state_round_trip(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    optimizer = model.configure_optimizer()
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    model(idx, idx)[1].backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(3)
    save_training_state(tmp_path, model, optimizer, generator, {"step": 1, "elapsed": 2.5})
    expected_draw = torch.randint(100, (5,), generator=generator)

    fresh = GPT(tiny_config)
    fresh_optimizer = fresh.configure_optimizer()
    fresh_generator = torch.Generator()
    meta = load_training_state(tmp_path, fresh, fresh_optimizer, fresh_generator)
    assert meta["step"] == 1 and meta["elapsed"] == 2.5
    assert torch.equal(torch.randint(100, (5,), generator=fresh_generator), expected_draw)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
        a, b = optimizer.state[p], fresh_optimizer.state[q]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_no_pickle_anywhere_in_the_project():
    """Weights and checkpoints load with safetensors only; nothing calls pickle or torch.save/load."""
    forbidden = re.compile(r"\bimport pickle\b|torch\.save\(|torch\.load\(|\.pt\b|\.pth\b|\.bin\b")
    sources = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and p.name != "test_checkpoint.py"]
    assert sources
    offenders = [str(p) for p in sources if forbidden.search(p.read_text())]
    assert offenders == []
    assert not [p for p in (ROOT / "weights").iterdir() if p.suffix in {".pt", ".pth", ".bin", ".pkl"}]

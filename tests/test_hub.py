"""The Hugging Face Hub is never reached: loading by repo id reads a Hub cache laid out here, and
uploads go to stand-ins for huggingface_hub's HfApi methods."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import train
from tests.conftest import ROOT
from tests.test_checkpoint import same_logits
from tinygpt.files import card as card_module
from tinygpt.files.checkpoint import WeightsError, load_model
from tinygpt.hub import models as hub
from tinygpt.hub.models import TinyGPT

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tiny_weights, tmp_path) -> Path:
    """A Hub cache holding someone/tiny-gpt at `main`, as huggingface_hub lays it out after a download:
    models--OWNER--NAME/snapshots/COMMIT/<files> and refs/main naming COMMIT."""
    repo = tmp_path / "hub" / "models--someone--tiny-gpt"
    load_model(tiny_weights, model_class=TinyGPT).save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path / "hub"


def offline_env(cache: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}


def test_from_pretrained_by_repo_id_reads_the_hub_cache(hub_cache, tiny_weights):
    expected = load_model(tiny_weights)
    model = TinyGPT.from_pretrained("someone/tiny-gpt", cache_dir=hub_cache, local_files_only=True)
    assert same_logits(model, expected) and not model.training
    model = load_model("hf://someone/tiny-gpt@main", cache_dir=hub_cache, local_files_only=True)
    assert same_logits(model, expected)


def test_command_line_loads_a_repo_id_offline(hub_cache, tiny_weights):
    def generate(model: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "tinygpt.generate", "ROMEO:", "-n", "20", "--seed", "1", "--model", model]
        env = offline_env(hub_cache)
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    from_hub = generate("someone/tiny-gpt")
    assert from_hub.returncode == 0, from_hub.stderr
    assert from_hub.stdout == generate(str(tiny_weights)).stdout


def test_unreachable_hub_is_one_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="someone/elsewhere not found: not a folder here, and the Hugging Face Hub"):
        load_model("someone/elsewhere", cache_dir=tmp_path, local_files_only=True)


@pytest.mark.parametrize("command", [["app.py"], ["-m", "tinygpt.evaluate"]])
def test_app_and_cli_report_an_unreachable_hub_in_one_line(tmp_path, command):
    args = [sys.executable, *command, "--model", "someone/elsewhere"]
    result = subprocess.run(args, cwd=ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"error: someone/elsewhere not found: .*Hugging Face Hub could not", lines[0])


def test_push_to_hub_uploads_the_hugging_face_layout(fake_hub, tiny_config):
    TinyGPT(tiny_config).push_to_hub("me/tiny")
    assert fake_hub["create_repo"]["repo_id"] == "me/tiny"
    assert fake_hub["upload_folder"]["files"] == ["README.md", "config.json", "model.safetensors"]


def test_train_py_pushes_to_hub_after_training(fake_hub, tmp_path, corpus, capsys):
    (tmp_path / "text.txt").write_text(corpus[:20_000])
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "text.txt"), "--out", str(out), "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--block-size", "16", "--max-iters", "3", "--eval-iters", "1", "--no-progress",
            "--push-to-hub", "me/tiny"]  # fmt: skip
    assert train.main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "uploaded to https://huggingface.co/me/tiny"
    upload = fake_hub["upload_folder"]
    assert upload["repo_id"] == "me/tiny" and upload["folder_path"] == out
    assert upload["allow_patterns"] == hub.SHARED_FILES
    assert {"README.md", "config.json", "model.safetensors", "train_log.jsonl"} <= set(upload["files"])
    summary = json.loads(printed[-2])
    assert ModelCard.load(out / "README.md").data.eval_results[0].metric_value == summary["val_loss"]


def test_train_py_refuses_a_bad_repo_id_before_training(fake_hub, capsys):
    assert train.main(["--push-to-hub", "not a repo id", "--max-iters", "1"]) == 2
    assert "error:" in capsys.readouterr().err and not fake_hub


def test_push_refuses_broken_weights(fake_hub, tiny_weights, tmp_path):
    broken = shutil.copytree(tiny_weights, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=r"model\.safetensors is not a readable safetensors file"):
        hub.push(broken, "me/tiny")
    assert hub.main(["push", str(tmp_path / "no" / "such" / "folder"), "me/tiny"]) == 2
    assert not fake_hub  # nothing was uploaded


def test_shipped_model_card_has_the_hub_metadata_and_the_readme_figure():
    card = ModelCard.load(ROOT / "weights" / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "tinygpt"
    assert card.data.pipeline_tag == "text-generation" and card.data.datasets == [card_module.DATASET]
    assert {"text-generation", "character-level", "shakespeare", "pytorch"} <= set(card.data.tags)
    readme = (ROOT / "README.md").read_text()
    figure = re.search(r"^\| `weights/` \| ([0-9.]+) \|", readme, re.MULTILINE).group(1)
    (result,) = card.data.eval_results
    assert result.metric_type == "loss" and result.dataset_split == "validation"
    assert f"{result.metric_value:.{len(figure.partition('.')[2])}f}" == figure  # the card's value, rounded
    assert card_module.is_model_card((ROOT / "weights" / "README.md").read_text())
    assert not card_module.is_model_card(readme)  # the project README is never overwritten by a training run

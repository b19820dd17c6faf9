import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from tests.conftest import ROOT
from tinygpt.files.checkpoint import (
    WeightsError,
    load_model,
    load_training_state,
    save_model,
    save_training_state,
    training_meta,
)
from tinygpt.hub.models import TinyGPT
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT


def same_logits(a: GPT, b: GPT) -> bool:
    idx = torch.arange(a.config.block_size).unsqueeze(0) % a.config.vocab_size
    return torch.equal(a(idx)[0], b(idx)[0])


def test_save_load_round_trip_gives_identical_logits(tiny_model, tiny_config, tmp_path):
    save_model(tiny_model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["vocab"] == tiny_config.vocab and stored["n_layer"] == 2
    loaded = load_model(tmp_path)
    assert same_logits(tiny_model, loaded)
    assert not loaded.training


def test_hugging_face_save_pretrained_and_from_pretrained(tiny_model, tiny_config, tmp_path):
    model = TinyGPT(tiny_config)
    model.load_state_dict(tiny_model.state_dict())
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    # config.json is the flat GPTConfig, vocabulary included: what GPTConfig.load reads.
    assert GPTConfig.load(tmp_path / "config.json") == tiny_config
    loaded = TinyGPT.from_pretrained(tmp_path)
    assert isinstance(loaded, TinyGPT) and loaded.config == tiny_config and not loaded.training
    assert same_logits(tiny_model, loaded)


def test_config_ignores_unknown_keys(tmp_path, tiny_config):
    tiny_config.save(tmp_path / "config.json")
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "added_in_a_later_version": 1}))
    assert GPTConfig.load(tmp_path / "config.json") == tiny_config


@pytest.mark.parametrize(("bf16", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_config_from_before_dtype_still_loads(tmp_path, tiny_config, bf16, dtype):
    raw = json.loads(tiny_config.to_json())
    del raw["dtype"], raw["grad_accum"]
    (tmp_path / "config.json").write_text(json.dumps({**raw, "bf16": bf16}))
    assert GPTConfig.load(tmp_path / "config.json").dtype == dtype


def test_training_state_round_trip(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    optimizer = model.configure_optimizer()
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    model(idx, idx)[1].backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(3)
    path = tmp_path / "checkpoint.safetensors"
    save_training_state(path, model, optimizer, generator, {"step": 1, "elapsed": 2.5})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # one file: one rename makes it complete
    expected_draw = torch.randint(100, (5,), generator=generator)

    fresh = GPT(tiny_config)
    fresh_optimizer = fresh.configure_optimizer()
    fresh_generator = torch.Generator()
    meta = load_training_state(path, fresh, fresh_optimizer, fresh_generator)
    assert meta["step"] == 1 and meta["elapsed"] == 2.5
    assert GPTConfig.from_dict(training_meta(path)["config"]) == tiny_config
    assert torch.equal(torch.randint(100, (5,), generator=fresh_generator), expected_draw)
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
        a, b = optimizer.state[p], fresh_optimizer.state[q]
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_no_pickle_or_eval_anywhere_in_the_project():
    """Weights and checkpoints load with safetensors only; nothing calls pickle, torch.save/load, eval or exec."""
    forbidden = re.compile(
        r"\bimport pickle\b|torch\.save\(|torch\.load\(|\.pt\b|\.pth\b|\.bin\b"
        r"|(?<![.\w])eval\(|(?<![.\w])exec\("  # model.eval() is fine: it only switches off dropout
    )
    sources = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and p.name != "test_checkpoint.py"]
    assert sources
    offenders = [str(p) for p in sources if forbidden.search(p.read_text())]
    assert offenders == []
    assert not [p for p in (ROOT / "weights").iterdir() if p.suffix in {".pt", ".pth", ".bin", ".pkl"}]


# --- Faults: each gives one WeightsError naming the file and the problem ------------------------


def edit_config(folder, **changes):
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, **changes}))


def edit_tensors(folder, change):
    path = folder / "model.safetensors"
    tensors = safetensors.torch.load_file(path)
    change(tensors)
    safetensors.torch.save_file(tensors, path)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_weight_byte(path):
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor's bytes: the header still parses
    path.write_bytes(bytes(data))


FAULTS = {
    "no config": (lambda d: (d / "config.json").unlink(), "config.json not found"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors not found"),
    "config not JSON": (lambda d: (d / "config.json").write_text("{'n_layer': 2"), "config.json is not valid JSON"),
    "config not an object": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json should hold"),
    "config wrong type": (lambda d: edit_config(d, n_layer="two"), "config.json: n_layer must be of type int"),
    "config impossible": (lambda d: edit_config(d, n_head=5), "config.json: n_embd (32) must be divisible"),
    "config no vocab": (lambda d: edit_config(d, vocab=""), "config.json has no vocab"),
    "weights truncated": (lambda d: truncate(d / "model.safetensors"), "model.safetensors is not a readable"),
    "weights garbage": (lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64), "not a readable safetensors"),
    "weights bit flip": (lambda d: flip_a_weight_byte(d / "model.safetensors"), "model.safetensors is corrupted"),
    "missing tensor": (
        lambda d: edit_tensors(d, lambda t: t.pop("lm_head.bias")),
        "model.safetensors lacks 1 tensor(s) the config calls for: lm_head.bias",
    ),
    "extra tensor": (
        lambda d: edit_tensors(d, lambda t: t.update({"blocks.9.ln1.weight": torch.ones(32)})),
        "model.safetensors has 1 tensor(s) this model does not have: blocks.9.ln1.weight",
    ),
    "config says another shape": (
        lambda d: edit_config(d, n_embd=64),
        "model.safetensors: token_embedding.weight does not fit the config: config says [65, 64], tensor has [65, 32]",
    ),
    "config says another vocabulary": (
        lambda d: edit_config(d, vocab="abc"),
        "config says [3, 32], tensor has [65, 32]",
    ),
}


@pytest.fixture
def broken(tiny_weights, tmp_path, request):
    """A copy of the tiny weights with one fault; the test's parameter names it."""
    folder = shutil.copytree(tiny_weights, tmp_path / "broken")
    FAULTS[request.param][0](folder)
    return folder, FAULTS[request.param][1]


@pytest.mark.parametrize("broken", FAULTS, indirect=True)
def test_each_fault_is_one_clear_error_naming_the_file(broken):
    folder, message = broken
    with pytest.raises(WeightsError) as err:
        load_model(folder)
    assert message in str(err.value) and str(folder) in str(err.value)
    if "JSON" not in message and "should hold" not in message:  # the mixin parses config.json first
        with pytest.raises(WeightsError, match=re.escape(message)):
            TinyGPT.from_pretrained(folder)


def test_a_missing_folder_or_a_file_for_a_folder_is_a_clear_error(tiny_weights, tmp_path):
    with pytest.raises(WeightsError, match="not found: no such folder"):
        load_model(tmp_path / "nothing" / "here")
    with pytest.raises(WeightsError, match=r"model\.safetensors is a file: give the folder"):
        load_model(tiny_weights / "model.safetensors")


@pytest.mark.parametrize("broken", ["weights truncated", "config says another shape"], indirect=True)
@pytest.mark.parametrize("tool", ["tinygpt.generate", "tinygpt.evaluate"])
def test_command_line_tools_report_faults_without_a_traceback(broken, tool):
    folder, message = broken
    command = [sys.executable, "-m", tool, "--model", str(folder)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr


# --- Interrupted and failed writes leave the previous file intact ---------------------------------


def half_then(error):
    """A stand-in for safetensors' save_file that writes half a file and then fails like `error`."""

    def save_file(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
        error()

    return save_file


def disk_full():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_fails_cleanly_and_keeps_the_previous_weights(tiny_model, tiny_config, tmp_path, monkeypatch):
    save_model(tiny_model, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    torch.manual_seed(1)
    monkeypatch.setattr(safetensors.torch, "save_file", half_then(disk_full))
    with pytest.raises(OSError, match=r"could not write .*model\.safetensors .*No space left") as err:
        save_model(GPT(tiny_config), tmp_path)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left behind
    assert same_logits(load_model(tmp_path), tiny_model)


KILLED_DURING_SAVE = """
import os, signal, sys
import safetensors.torch, torch
from tests.test_checkpoint import half_then
from tinygpt.files.checkpoint import save_model, save_training_state
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT

config = GPTConfig(**{config})
torch.manual_seed(1)
model = GPT(config)
safetensors.torch.save_file = half_then(lambda: os.kill(os.getpid(), signal.SIGKILL))
if sys.argv[1] == "weights":
    save_model(model, sys.argv[2])
else:
    save_training_state(sys.argv[2], model, model.configure_optimizer(), torch.Generator(), {{"step": 9}})
"""


def test_a_kill_during_a_save_leaves_the_previous_files_loadable(tiny_model, tiny_config, tmp_path):
    save_model(tiny_model, tmp_path / "weights")
    checkpoint = tmp_path / "checkpoint.safetensors"
    save_training_state(checkpoint, tiny_model, tiny_model.configure_optimizer(), torch.Generator(), {"step": 4})
    script = KILLED_DURING_SAVE.format(config=repr(json.loads(tiny_config.to_json())))
    for what, path in [("weights", tmp_path / "weights"), ("state", checkpoint)]:
        result = subprocess.run([sys.executable, "-c", script, what, str(path)], cwd=ROOT, capture_output=True)
        assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert same_logits(load_model(tmp_path / "weights"), tiny_model)
    assert training_meta(checkpoint)["step"] == 4
    fresh = GPT(tiny_config)
    load_training_state(checkpoint, fresh, fresh.configure_optimizer(), torch.Generator())
    assert same_logits(fresh.eval(), tiny_model)


@pytest.mark.parametrize(("broken", "how"), [("weights truncated", "--model"), ("extra tensor", "TINYGPT_MODEL")],
                         indirect=["broken"])  # fmt: skip
def test_app_refuses_broken_weights_at_start_up(broken, how):
    """Before any server starts: one line naming the file, exit status 2. A Space sets TINYGPT_MODEL."""
    folder, message = broken
    args, env = (["--model", str(folder)], os.environ) if how == "--model" else ([], {**os.environ, how: str(folder)})
    result = subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {folder}") and message in line


def test_saving_never_overwrites_a_readme_that_is_not_a_model_card(tiny_model, tmp_path):
    (tmp_path / "README.md").write_text("# My project\n")
    save_model(tiny_model, tmp_path)
    assert (tmp_path / "README.md").read_text() == "# My project\n"
    assert load_model(tmp_path).config == tiny_model.config

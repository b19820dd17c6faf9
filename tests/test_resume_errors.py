"""`train.py --resume` on a malformed training checkpoint: one line naming the problem, exit 2, the
checkpoint left as it was, and nothing restored from it."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import train as train_py
from tinygpt.files.checkpoint import WeightsError, load_training_state
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT

CHECKPOINT = "checkpoint.safetensors"
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "4",
        "--max-iters", "2", "--warmup-iters", "1", "--eval-iters", "1", "--dtype", "float32", "--ema-decay", "0.9",
        "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus):
    """A folder where a 2-step run finished: its checkpoint resumes to a run with nothing left to do."""
    root = tmp_path_factory.mktemp("resume")
    (root / "text.txt").write_text(corpus[:20_000])
    flags = ["--data", str(root / "text.txt"), *TINY]
    assert train_py.main([*flags, "--out", str(root / "run")]) == 0
    return flags, root / "run"


def read(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["meta"])  # noqa: SIM118


def rewrite(path, change):
    """Apply change(tensors, meta) and save the result without a checksum, as a hand-edited file would be."""
    tensors, meta = read(path)
    meta_text = change(tensors, meta)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, path, metadata={"format": "pt", "meta": meta_text or json.dumps(meta)})


def drop(name):
    def change(tensors, meta):
        del tensors[name]

    return change


def drop_meta(key):
    def change(tensors, meta):
        del meta[key]

    return change


def replace(name, value):
    return lambda tensors, meta: tensors.update({name: value(tensors[name])})


def add(name, value):
    return lambda tensors, meta: tensors.update({name: value})


def set_meta(key, value):
    return lambda tensors, meta: meta.update({key: value})


MALFORMED = {
    "missing rng tensor": (drop("rng.batches"), "lacks rng.batches"),
    "missing weight": (drop("model.lm_head.bias"), "lacks 1 tensor(s)"),
    "missing averaged weight": (drop("average.ln_f.weight"), "lacks 1 tensor(s)"),
    "missing optimizer moment": (drop("optim.3.exp_avg_sq"), "optimizer state is incomplete"),
    "weight of the wrong shape": (replace("model.lm_head.bias", lambda t: t[:-1]), "does not fit the config"),
    "moment of the wrong shape": (replace("optim.0.exp_avg", lambda t: t[:, :-1]), "optim.0.exp_avg is"),
    "rng of the wrong shape": (replace("rng.torch", lambda t: t[:100]), "rng.torch is not a random generator"),
    "weight of the wrong dtype": (replace("model.ln_f.bias", lambda t: t.half()), "is torch.float16, not"),
    "moment of the wrong dtype": (replace("optim.1.exp_avg", lambda t: t.double()), "optim.1.exp_avg is"),
    "rng of the wrong dtype": (replace("rng.batches", lambda t: t.float()), "rng.batches is not a random generator"),
    "unknown optimizer tensor": (add("optim.99.step", torch.tensor(1.0)), "belongs to no parameter"),
    "state not JSON": (lambda tensors, meta: '{"step": 2, "elapsed"', "is not valid JSON"),
    "state not an object": (lambda tensors, meta: "[2, 0.5]", "should be a JSON object"),
    "step missing": (drop_meta("step"), "no valid step"),
    "step negative": (set_meta("step", -1), "no valid step"),
    "elapsed a string": (set_meta("elapsed", "1 s"), "no valid elapsed time"),
    "config missing": (drop_meta("config"), "has no config"),
    "config of wrong types": (set_meta("config", {"n_layer": "one"}), "config in its training state is invalid"),
}


def damaged_copy(finished_run, tmp_path):
    flags, run = finished_run
    out = shutil.copytree(run, tmp_path / "run")
    return flags, out, out / CHECKPOINT


def assert_refused(flags, out, checkpoint, message, capsys):
    before = checkpoint.read_bytes()
    capsys.readouterr()
    assert train_py.main([*flags, "--out", str(out), "--resume"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert checkpoint.read_bytes() == before  # left in place, untouched


@pytest.mark.parametrize("case", MALFORMED)
def test_resume_refuses_a_malformed_checkpoint_in_one_line(finished_run, tmp_path, capsys, case):
    change, message = MALFORMED[case]
    flags, out, checkpoint = damaged_copy(finished_run, tmp_path)
    rewrite(checkpoint, change)
    assert_refused(flags, out, checkpoint, message, capsys)


def test_resume_refuses_a_truncated_or_corrupted_checkpoint(finished_run, tmp_path, capsys):
    flags, out, checkpoint = damaged_copy(finished_run, tmp_path)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    assert_refused(flags, out, checkpoint, "truncated or corrupted", capsys)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # a byte of the last tensor: the file reads, the checksum does not match
    checkpoint.write_bytes(bytes(flipped))
    assert_refused(flags, out, checkpoint, "checksum", capsys)


def test_the_last_check_fails_before_anything_is_restored(finished_run, tmp_path):
    """A checkpoint whose weights are fine but whose optimizer state is not leaves the model as it was."""
    checkpoint = damaged_copy(finished_run, tmp_path)[2]
    rewrite(checkpoint, replace("optim.16.exp_avg", lambda t: t[:-1]))  # the last parameter's moment
    _, meta = read(checkpoint)
    model = GPT(GPTConfig.from_dict(meta["config"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    with pytest.raises(WeightsError, match=r"optim\.16\.exp_avg"):
        load_training_state(checkpoint, model, model.configure_optimizer(), torch.Generator())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)

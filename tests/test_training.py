import json
import math
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import train as train_py
from tests.conftest import ROOT
from tinygpt.files.checkpoint import load_model, training_meta
from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.model.config import GPTConfig
from tinygpt.training import trainer as training
from tinygpt.training.data import get_batch, split
from tinygpt.training.trainer import Trainer, learning_rate, train

SMALL = dict(block_size=32, n_layer=2, n_head=4, n_embd=64, batch_size=16, dropout=0.0, eval_iters=4)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(corpus[:60_000])
    return path


def vocab_size(out) -> int:
    return load_model(out).config.vocab_size


def test_get_batch_returns_windows_and_their_next_characters():
    data = torch.arange(100)
    x, y = get_batch(data, batch_size=4, block_size=8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)  # consecutive integers: each target is the next character
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)


def test_split_is_first_ninety_percent_then_the_rest():
    train_ids, val_ids = split(torch.arange(1000))
    assert len(train_ids) == 900 and train_ids[-1] == 899 and val_ids[0] == 900


def test_learning_rate_warms_up_then_decays_to_min_lr():
    config = GPTConfig(vocab="ab", learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100)
    assert learning_rate(config, 0, 0.0) == pytest.approx(1e-4)
    assert learning_rate(config, 9, 0.09) == pytest.approx(1e-3)
    assert learning_rate(config, 50, 0.5) == pytest.approx(5.5e-4)
    assert learning_rate(config, 100, 1.0) == pytest.approx(1e-4)
    assert learning_rate(config, 150, 1.5) == pytest.approx(1e-4)


def test_progress_is_the_further_of_the_steps_and_the_clock_used():
    def progress(step: int, elapsed: float, **config) -> float:
        return Trainer.progress(SimpleNamespace(config=GPTConfig(vocab="ab", **config), step=step, elapsed=elapsed))

    assert progress(10, 30.0, max_iters=0, minutes=1) == pytest.approx(0.5)  # a budget: half its minute gone
    assert progress(10, 60.0, max_iters=0, minutes=1) == pytest.approx(1.0)
    assert progress(80, 30.0, max_iters=100, minutes=1) == pytest.approx(0.8)
    assert progress(80, 1e6, max_iters=100, minutes=0) == pytest.approx(0.8)  # no budget: steps only


def test_short_training_run_learns(small_corpus, tmp_path):
    config = GPTConfig(**SMALL, max_iters=150, warmup_iters=10, learning_rate=3e-3, eval_interval=50)
    summary = train(config, small_corpus, tmp_path, device="cpu", progress_bar=False)
    assert summary["steps"] == 150
    assert config.vocab == ""  # the caller's config is left as it was; the trained one is saved
    # Uniform guessing over this corpus's vocabulary scores ln(V) nats per character.
    assert summary["val_loss"] < math.log(vocab_size(tmp_path)) - 1.5
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    curve = [r for r in records if "val_loss" in r and "final" not in r]
    assert [r["step"] for r in curve] == [0, 50, 100, 150]
    assert curve[-1]["val_loss"] < curve[0]["val_loss"] - 1.5
    assert {"train_loss", "lr", "elapsed_s"} <= curve[0].keys()
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


def ctrl_c_at_batch(n: int):
    """A stand-in for training.get_batch that raises SIGINT, like Ctrl-C, while drawing the n-th batch."""
    drawn = 0

    def draw(*args, **kwargs):
        nonlocal drawn
        drawn += 1
        if drawn == n:
            signal.raise_signal(signal.SIGINT)
        return get_batch(*args, **kwargs)

    return draw


@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["last-step", "averaged"])
def test_interrupted_training_resumes_to_identical_weights(small_corpus, tmp_path, monkeypatch, ema_decay):
    config = GPTConfig(
        **{**SMALL, "dropout": 0.1}, max_iters=8, warmup_iters=2, eval_interval=4, dtype="float32", ema_decay=ema_decay
    )
    train(config, small_corpus, tmp_path / "straight", device="cpu", progress_bar=False)

    monkeypatch.setattr(training, "get_batch", ctrl_c_at_batch(5))  # as if the user pressed Ctrl-C in step 5
    stopped = train(config, small_corpus, tmp_path / "resumed", device="cpu", progress_bar=False)
    assert stopped == {"steps": 5, "elapsed_s": stopped["elapsed_s"], "stopped": True}
    monkeypatch.undo()
    resumed = train(config, small_corpus, tmp_path / "resumed", device="cpu", resume=True, progress_bar=False)
    assert resumed["steps"] == 8

    straight = load_file(tmp_path / "straight" / "model.safetensors")
    again = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [0, 4, 8, 8]  # evaluations at 0, 4, 8, then the final exact evaluation


def test_weight_average_is_shipped_and_compared_with_the_last_step(small_corpus, tmp_path):
    config = GPTConfig(**SMALL, max_iters=40, warmup_iters=5, learning_rate=3e-3, eval_interval=20, ema_decay=0.9)
    summary = train(config, small_corpus, tmp_path, device="cpu", progress_bar=False)
    assert summary["val_loss"] != summary["last_step_val_loss"]
    assert summary["val_loss"] < math.log(vocab_size(tmp_path)) - 0.5  # the average learned too
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all("ema_val_loss" in r for r in records if "final" not in r)


def test_resume_reads_a_checkpoint_in_the_older_two_file_format(small_corpus, tmp_path, monkeypatch):
    """OUT/checkpoint/{state.safetensors, meta.json}, with `bf16` for dtype, as runs before this version wrote."""
    config = GPTConfig(**SMALL, max_iters=4, warmup_iters=1, eval_interval=2, dtype="float32")
    train(config, small_corpus, tmp_path / "straight", device="cpu", progress_bar=False)
    monkeypatch.setattr(training, "get_batch", ctrl_c_at_batch(3))
    assert train(config, small_corpus, tmp_path, device="cpu", progress_bar=False)["steps"] == 3
    monkeypatch.undo()
    with safe_open(tmp_path / "checkpoint.safetensors", "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["meta"])  # noqa: SIM118
    (tmp_path / "checkpoint.safetensors").unlink()
    (tmp_path / "checkpoint").mkdir()
    save_file(tensors, tmp_path / "checkpoint" / "state.safetensors")
    del meta["config"]["dtype"], meta["config"]["grad_accum"]
    meta["config"]["bf16"] = False
    (tmp_path / "checkpoint" / "meta.json").write_text(json.dumps(meta))

    assert train(config, small_corpus, tmp_path, device="cpu", resume=True, progress_bar=False)["steps"] == 4
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_refuses_a_model_of_another_shape_or_alphabet(small_corpus, tmp_path):
    config = GPTConfig(**SMALL, max_iters=2, warmup_iters=1)
    train(config, small_corpus, tmp_path, device="cpu", progress_bar=False)
    with pytest.raises(ValueError, match=r"another shape \(n_layer 2, not 3\)"):
        train(GPTConfig(**{**SMALL, "n_layer": 3}, max_iters=2), small_corpus, tmp_path, resume=True)
    other_text = tmp_path / "other.txt"
    other_text.write_text(small_corpus.read_text().upper())
    with pytest.raises(ValueError, match="another alphabet"):
        train(config, other_text, tmp_path, resume=True)


TINY_FLAGS = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
              "--eval-iters", "1", "--eval-interval", "2", "--warmup-iters", "1", "--no-progress"]  # fmt: skip


def test_train_py_resume_continues_the_checkpoint_recipe_and_extends_it(small_corpus, tmp_path):
    out = ["--data", str(small_corpus), "--out", str(tmp_path)]
    assert run_train_py(*out, *TINY_FLAGS, "--max-iters", "4").returncode == 0
    # No shape flags: the checkpoint's recipe is resumed; --max-iters extends it.
    result = run_train_py(*out, "--resume", "--max-iters", "6", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["steps"] == 6
    assert load_model(tmp_path).config.n_embd == 16
    result = run_train_py(*out, "--resume", "--n-embd", "32", "--n-head", "2", "--max-iters", "8")
    assert result.returncode == 2
    assert "another shape (n_embd 16, not 32)" in result.stderr and "Traceback" not in result.stderr


def test_a_stop_event_ends_training_with_a_checkpoint_and_finish_keeps_the_weights(small_corpus, tmp_path):
    """As the page's Stop button does it: from callbacks, in a thread other than the main one."""
    stop, seen = threading.Event(), []

    def on_step(progress: dict) -> None:
        if progress["step"] == 3:
            stop.set()

    config = GPTConfig(**SMALL, max_iters=10, warmup_iters=1, eval_interval=2)
    trainer = training.Trainer(config, small_corpus, tmp_path, device="cpu", progress_bar=False, stop=stop,
                               on_step=on_step, on_eval=seen.append)  # fmt: skip
    worker = threading.Thread(target=lambda: seen.append(trainer.run()))
    worker.start()
    worker.join()
    assert seen[-1] == {"steps": 3, "elapsed_s": seen[-1]["elapsed_s"], "stopped": True}
    assert [r["step"] for r in seen[:-1]] == [0, 2]  # on_eval got each loss estimate
    assert training_meta(tmp_path / "checkpoint.safetensors")["step"] == 3
    assert not (tmp_path / "model.safetensors").exists()
    summary = trainer.finish()
    assert summary["steps"] == 3 and load_model(tmp_path).config.vocab == trainer.config.vocab


def run_train_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_train_py_help_lists_every_hyperparameter_with_its_default():
    result = run_train_py("--help")
    assert result.returncode == 0
    for flag in ["--data", "--out", "--n-layer", "--n-head", "--n-embd", "--block-size", "--batch-size",
                 "--max-iters", "--minutes", "--learning-rate", "--dropout", "--eval-interval", "--eval-iters",
                 "--seed", "--device", "--resume", "--dtype", "--grad-accum", "--push-to-hub"]:  # fmt: skip
        assert flag in result.stdout
    help_text = " ".join(result.stdout.split())  # argparse wraps lines
    for name, value in [("max_iters", 3400), ("learning_rate", 0.002), ("weight_decay", 2.0), ("threads", 0)]:
        assert f"(default: {value})" in help_text, name
    assert help_text.count("(default:") >= len(fields(GPTConfig)) - 1 + 5  # every hyperparameter but vocab, and more


def test_train_py_on_a_custom_text_file(tmp_path):
    text = "the quick brown fox jumps over the lazy dog\n" * 40
    data = tmp_path / "mine.txt"
    data.write_text(text)
    out = tmp_path / "out"
    args = ["--data", str(data), "--out", str(out), "--n-layer", "1", "--n-embd", "16", "--n-head", "2"]
    result = run_train_py(*args, "--block-size", "8", "--max-iters", "5", "--eval-iters", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["steps"] == 5
    assert json.loads((out / "config.json").read_text())["vocab"] == "".join(sorted(set(text)))


def test_the_progress_bar_redraws_rarely_into_a_log_file(tmp_path):
    """stderr here is a pipe, as in `nohup python train.py > log`: a redraw every 0.1 s would fill it."""
    data = tmp_path / "mine.txt"
    data.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    args = ["--data", str(data), "--out", str(tmp_path / "out"), "--n-layer", "1", "--n-embd", "16", "--n-head", "2"]
    result = run_train_py(*args, "--block-size", "8", "--max-iters", "1500", "--eval-interval", "100000",
                          "--eval-iters", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "1500/1500" in result.stderr and len(result.stderr.splitlines()) < 30  # not one line per redraw


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "no/such/file.txt"], "No such file"),
        (["--n-embd", "30", "--n-head", "4"], "divisible"),
    ],
)
def test_train_py_reports_bad_input_without_a_traceback(args, message):
    result = run_train_py(*args, "--max-iters", "1")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_train_py_refuses_a_corpus_shorter_than_the_context(tmp_path):
    data = tmp_path / "tiny.txt"
    data.write_text("too short")
    result = run_train_py("--data", str(data), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "too short for block_size" in result.stderr and "Traceback" not in result.stderr


# Run by torchrun in each process: train.py's main, then this process's own trained weights and the
# first batch it trained on to a file, read from the model object itself (the first GPT built) and
# from the batches drawn, not from anything train() reports.
RANK_SCRIPT = """
import os, sys
sys.path.insert(0, os.getcwd())
from safetensors.torch import save_file
import tinygpt.model.gpt, tinygpt.training.trainer

built, init = [], tinygpt.model.gpt.GPT.__init__
tinygpt.model.gpt.GPT.__init__ = lambda self, *a, **k: (init(self, *a, **k), built.append(self))[0]
batches, draw = [], tinygpt.training.trainer.get_batch
tinygpt.training.trainer.get_batch = lambda *a, **k: batches.append(draw(*a, **k)) or batches[-1]
import train

code = train.main(sys.argv[2:])
tensors = {k: v.detach().contiguous() for k, v in built[0].state_dict().items()}
save_file(tensors | {"first_batch": batches[0][0]}, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.safetensors"))
sys.exit(code)
"""


def test_torchrun_trains_data_parallel(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(DEFAULT_DATA.read_text()[:30_000])
    (tmp_path / "rank_script.py").write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(tmp_path / "rank_script.py"), str(tmp_path), "--data", str(data), "--out", str(tmp_path / "out"),
               "--device", "cpu", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16",
               "--max-iters", "4", "--eval-iters", "1", "--grad-accum", "2", "--ema-decay", "0",
               "--no-progress"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2" in result.stdout
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == 4  # only rank 0 reports and saves
    # Each process drew its own batches; DDP averaged their gradients, so both hold the same weights,
    # and they are the ones written. (Without DDP the two replicas drift apart at the first step.)
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert not torch.equal(rank0.pop("first_batch"), rank1.pop("first_batch"))  # each its own data
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert rank0.keys() == rank1.keys() == written.keys()
    assert all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], written[k]) for k in rank0)
    assert load_model(tmp_path / "out").config.grad_accum == 2


def test_gradient_accumulation_matches_one_big_batch(small_corpus, tmp_path):
    """Two micro-batches of 8 give the step one batch of 16 gives (the same windows, in float32)."""
    common = {**SMALL, "max_iters": 3, "warmup_iters": 1, "dtype": "float32"}
    train(GPTConfig(**{**common, "batch_size": 16}), small_corpus, tmp_path / "big", device="cpu", progress_bar=False)
    config = GPTConfig(**{**common, "batch_size": 8, "grad_accum": 2})
    train(config, small_corpus, tmp_path / "accumulated", device="cpu", progress_bar=False)
    big = load_file(tmp_path / "big" / "model.safetensors")
    accumulated = load_file(tmp_path / "accumulated" / "model.safetensors")
    # Adam divides by |gradient|, so rounding shows on tiny gradients; a wrong sum would be off by ~lr.
    assert all(torch.allclose(big[k], accumulated[k], rtol=0, atol=1e-5) for k in big)


def test_float16_trains_with_a_gradient_scaler_that_is_checkpointed(small_corpus, tmp_path):
    config = GPTConfig(**SMALL, max_iters=12, warmup_iters=2, learning_rate=3e-3, eval_interval=6, dtype="float16")
    summary = train(config, small_corpus, tmp_path, device="cpu", checkpoint_interval=6, progress_bar=False)
    assert summary["val_loss"] < math.log(vocab_size(tmp_path)) - 0.3
    with safe_open(tmp_path / "checkpoint.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    assert meta["scaler"]["scale"] > 0  # float16 needs a loss scale, and resumes with it
    assert load_file(tmp_path / "model.safetensors")["lm_head.weight"].dtype == torch.float32


def test_train_py_killed_with_sigkill_resumes_to_the_same_losses_and_weights(small_corpus, tmp_path, capsys):
    """kill -9 at some moment after the first checkpoint, --resume, and the run ends as if never stopped."""
    small = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "dropout"]
    # One thread in every process: thread counts change float rounding, and the runs must match exactly.
    flags = ["--data", str(small_corpus), "--device", "cpu", "--no-progress", "--checkpoint-interval", "3",
             "--max-iters", "40", "--eval-interval", "5", "--warmup-iters", "2", "--dropout", "0.1",
             "--dtype", "float32", "--threads", "1", *small]  # fmt: skip
    assert train_py.main([*flags, "--out", str(tmp_path / "straight")]) == 0  # in this process: faster

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "train.py", *flags, "--out", str(out)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.safetensors").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    process.kill()
    assert process.wait() == -signal.SIGKILL, "train.py finished before it could be killed: make the run longer"
    killed_at = training_meta(out / "checkpoint.safetensors")["step"]
    assert 0 < killed_at < 40
    assert train_py.main([*flags, "--out", str(out), "--resume"]) == 0

    def losses(folder):
        records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records if "final" not in r]

    assert losses(out) == losses(tmp_path / "straight")  # every evaluation once, with the same figures
    summaries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(summaries) == 2 and summaries[0]["sha256"] == summaries[1]["sha256"]  # identical final weights

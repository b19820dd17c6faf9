"""Training in the page (the Train tab): a visitor's text in, their own small model out, live.

Read top to bottom:
  limits and checks  - what text and budgets are accepted, each refusal one clear sentence;
  page_recipe        - the budget preset (tinygpt.config.budget_recipe) with the clock-driven
                       evaluation the live curve needs;
  train_text         - the one training call: a Trainer run that reports progress through `emit`
                       (loss points, estimates, samples) and honours `stop`; plain, so it can be
                       wrapped (a GPU slice on a Space) or run here in a process of its own;
  TrainingJob        - train_text in a child process (`python -m tinygpt.training.playground`) with one torch
                       thread: torch's thread count is global to a process, so a training in the
                       server's own process would change the Write tab's thread count as well. It
                       keeps the normal CPU priority: at the lowest (nice 19) a machine busy with
                       other work starved it (23 steps in a minute, against 255; README);
  VisitorModels      - each session's trained model, freed when the session closes; a training
                       whose session closes is killed then (nobody is left to use its model):
                       Gradio runs the page's unload as soon as the tab's connection closes,
                       and SIGKILL frees the process's memory at once; the Train tab deletes
                       its folder when its stream ends, at once after the kill (or, when the
                       stream drops first, at its next update: every UPDATE_INTERVAL_S while it
                       trains);
  pack               - the download: one zip of model.safetensors, config.json and the card.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tinygpt.files.checkpoint import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE
from tinygpt.model.config import GPTConfig, budget_recipe
from tinygpt.model.gpt import GPT
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving.backends import TorchBackend
from tinygpt.serving.generate import InputError, complete
from tinygpt.training.data import split
from tinygpt.training.trainer import Trainer

MIN_MINUTES = 0.5
MAX_MINUTES = 10.0  # app.py --max-train-minutes changes it
MAX_TEXT_CHARS = 5_000_000  # about 5 MB: four times Tiny Shakespeare
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_ALPHABET = 5_000  # distinct characters; enough for Chinese or Japanese prose
EVALS_PER_RUN = 10  # loss estimates (points on the validation curve), each followed by a sample
STEP_REPORT_S = 0.25  # the training loss is sent as the mean over this long, not every step
SAMPLE_CHARS = 160
SAMPLE_SEED = 0  # the same seed for every sample, so they differ only by what the model has learned
MAX_KEPT_MODELS = 16  # trained models kept at once; API sessions never close, so the oldest goes first
ROOT = Path(__file__).resolve().parents[2]


# --- Limits and checks ---------------------------------------------------------------------------


def check_minutes(minutes: object, low: float = MIN_MINUTES, high: float = MAX_MINUTES) -> float:
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not low <= minutes <= high:
        raise InputError(f"minutes must be a number from {low:g} to {high:g}, not {minutes!r}")
    return float(minutes)


def shortest_text(block_size: int) -> int:
    """The fewest characters that give both splits (90% / 10%) one window of block_size + 1."""
    n = block_size + 2
    while min(len(part) for part in split(range(n))) <= block_size:
        n += 1
    return n


def check_text(text: object, block_size: int) -> str:
    """The text to train on, or InputError saying what is wrong with it."""
    if not isinstance(text, str):
        raise InputError(f"the text must be a string, not {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise InputError("there is no text to train on: paste some, upload a .txt file, or pick the example")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"the text is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}")
    if "\x00" in text:
        raise InputError("this looks like a binary file, not text (it holds NUL characters)")
    if len(text) < shortest_text(block_size):
        raise InputError(
            f"the text is {len(text):,} characters long; training with a context of {block_size} characters "
            f"needs at least {shortest_text(block_size):,} (the last 10% validates)"
        )
    if len(set(text)) > MAX_ALPHABET:
        raise InputError(f"the text uses {len(set(text)):,} different characters; the limit is {MAX_ALPHABET:,}")
    return text


def read_upload(path: str | Path) -> str:
    """An uploaded file's text: at most MAX_UPLOAD_BYTES of UTF-8 (a byte-order mark is dropped)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"{path.name} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        where = f"byte {err.start} cannot be decoded"
        raise InputError(f"{path.name} is not UTF-8 text ({where}): save it as UTF-8") from None
    if "\x00" in text:
        raise InputError(f"{path.name} looks like a binary file, not text")
    return text


# --- The training --------------------------------------------------------------------------------


def page_recipe(minutes: float) -> GPTConfig:
    """The preset for `minutes`, evaluated by the clock (EVALS_PER_RUN times) instead of every
    eval_interval steps, on few batches: each estimate is a point of the live curve."""
    return replace(budget_recipe(minutes), eval_interval=1_000_000, eval_iters=5)


def sample(model: GPT, n: int = SAMPLE_CHARS) -> str:
    """What the model writes from the start of a line, at temperature 0.8."""
    was_training = model.training
    model.eval()
    _, steps = complete(TorchBackend(model), CharTokenizer(model.config.vocab), "", n, 0.8, SAMPLE_SEED)
    text = "".join(step.chars[0] for step in steps)
    model.train(was_training)
    return text


Emit = Callable[[dict], None]


class Reporter:
    """Trainer callbacks that turn a run into the page's events: the mean training loss every
    STEP_REPORT_S, a loss estimate and a sample EVALS_PER_RUN times, spread over the budget."""

    def __init__(self, emit: Emit, minutes: float) -> None:
        self.emit = emit
        self.eval_every_s = 60 * minutes / EVALS_PER_RUN
        self.trainer: Trainer | None = None
        self.losses: list[float] = []
        self.last_report, self.next_eval = 0.0, float("inf")

    def on_step(self, record: dict) -> None:
        self.losses.append(record["loss"])
        elapsed = record["elapsed_s"]
        if elapsed - self.last_report >= STEP_REPORT_S:
            loss = sum(self.losses) / len(self.losses)
            self.emit({"event": "step", "step": record["step"], "loss": round(loss, 4),
                       "elapsed_s": round(elapsed, 1), "progress": round(record["progress"], 4)})  # fmt: skip
            self.losses, self.last_report = [], elapsed
        # The trainer itself evaluates at step 0 and at the end; skip a due estimate just before the end.
        if time.perf_counter() >= self.next_eval and record["progress"] < 1 - 0.5 / EVALS_PER_RUN:
            started = time.perf_counter()
            self.trainer.evaluate(record["lr"])
            # At most a quarter of the time goes to estimates and samples (in a short run, every few steps would).
            self.next_eval = time.perf_counter() + max(self.eval_every_s, 3 * (time.perf_counter() - started))

    def on_eval(self, record: dict) -> None:
        self.emit({"event": "eval", **{k: record[k] for k in ("step", "train_loss", "val_loss", "elapsed_s")}})
        self.emit({"event": "sample", "step": record["step"], "text": sample(self.trainer.shipped_model)})
        self.next_eval = time.perf_counter() + self.eval_every_s


def train_text(
    config: GPTConfig,
    data_path: str | Path,
    out_dir: str | Path,
    emit: Emit,
    stop: threading.Event | None = None,
    device: str = "auto",
    threads: int = 1,
) -> dict:
    """Train `config` (its `minutes` are the budget) on a UTF-8 text file into `out_dir`, reporting
    through `emit`: {"event": "start" | "step" | "eval" | "sample" | "done", ...}. A set `stop` ends
    the run early and keeps what was learned. Returns the summary, with the exact validation loss."""
    reporter = Reporter(emit, config.minutes)
    trainer = Trainer(config, data_path, out_dir, device=device, progress_bar=False, threads=threads, stop=stop,
                      on_step=reporter.on_step, on_eval=reporter.on_eval)  # fmt: skip
    reporter.trainer = trainer
    model = trainer.model
    emit({"event": "start", "params": model.num_params(), "vocab_size": model.config.vocab_size,
          "minutes": config.minutes, "device": trainer.device})  # fmt: skip
    summary = trainer.run()
    if summary.get("stopped"):
        emit({"event": "finishing", "step": trainer.step})
        summary = {**trainer.finish(), "stopped": True}
    (Path(out_dir) / "checkpoint.safetensors").unlink(missing_ok=True)  # the page never resumes
    emit({"event": "done", "summary": summary})
    return summary


def worker(argv: list[str] | None = None) -> int:
    """`python -m tinygpt.training.playground --config JSON --data FILE --out DIR`: train_text on one thread,
    events as JSON lines on stdout; a line "stop" on stdin, or its end (the server gone), stops."""
    parser = argparse.ArgumentParser(description=worker.__doc__)
    parser.add_argument("--config", required=True, help="the GPTConfig as JSON")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the trainer's own prints go to the log
    sys.stdout = sys.stderr

    stop = threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    torch.set_num_interop_threads(1)
    try:
        train_text(GPTConfig.from_dict(json.loads(args.config)), args.data, args.out,
                   lambda event: events.write(json.dumps(event) + "\n"), stop, threads=1)  # fmt: skip
    except ValueError as err:  # a text the checks let through but the trainer cannot use
        events.write(json.dumps({"event": "error", "message": str(err)}) + "\n")
        return 2
    return 0


class TrainingError(RuntimeError):
    """The training process failed; the message is its last words."""


class TrainingJob:
    """train_text in a child process with one torch thread; `events()` streams what it emits."""

    def __init__(self, config: GPTConfig, data_path: Path, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.log = out_dir / "train.log"
        out_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        command = [sys.executable, "-m", "tinygpt.training.playground", "--config", config.to_json(),
                   "--data", str(data_path), "--out", str(out_dir)]  # fmt: skip
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            text=True, encoding="utf-8", env=env)  # fmt: skip

    def events(self) -> Iterator[dict]:
        """Each event as it comes; ends with "done", or raises TrainingError (or InputError)."""
        for line in self.process.stdout:
            event = json.loads(line)
            if event["event"] == "error":
                raise InputError(event["message"])
            yield event
            if event["event"] == "done":
                return
        self.process.wait()
        lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        last_words = lines[-1] if lines else f"exit status {self.process.returncode}"
        raise TrainingError(f"training stopped unexpectedly: {last_words}")

    def stop(self) -> None:
        """Ask the run to end after its current step; it still finishes and saves the model."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):  # it may end meanwhile: its stdin is then closed
                self.process.stdin.write("stop\n")
                self.process.stdin.flush()

    def abandon(self) -> None:
        """End the run at once, keeping nothing (its visitor has left): the process is killed, so its
        memory is the system's again as soon as the signal lands, with no final scoring or saving."""
        self.process.kill()  # a no-op once it has been reaped

    def close(self, grace_s: float = 30) -> None:
        """Stop the process, by request, then by force after `grace_s`."""
        self.stop()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):  # a "stop" still buffered for a process that has ended
                stream.close()


# --- Each visitor's model ------------------------------------------------------------------------


@dataclass
class VisitorModel:
    folder: Path  # model.safetensors, config.json, README.md
    model: GPT  # ready for generation
    summary: dict


class VisitorModels:
    """The trained model and the running job of each session (a Gradio session hash), under one
    temporary folder. `drop(session)` frees a session's model and files; beyond `max_kept` models the
    least recently used is dropped too, since API clients never close their session."""

    def __init__(self, root: Path | None = None, max_kept: int = MAX_KEPT_MODELS) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="tinygpt-train-"))
        self.max_kept = max_kept
        self.models: OrderedDict[str, VisitorModel] = OrderedDict()
        self.jobs: dict[str, TrainingJob] = {}
        self.lock = threading.Lock()

    def folder(self, session: str) -> Path:
        """A fresh folder for a session's next training; its previous model is dropped."""
        self.drop(session)
        folder = self.root / f"{session}-{time.monotonic_ns()}"
        folder.mkdir(parents=True)
        return folder

    def keep(self, session: str, visitor_model: VisitorModel) -> None:
        with self.lock:
            self.models[session] = visitor_model
            dropped = [self.models.popitem(last=False)[1] for _ in range(len(self.models) - self.max_kept)]
        for old in dropped:
            shutil.rmtree(old.folder, ignore_errors=True)

    def get(self, session: str) -> VisitorModel | None:
        with self.lock:
            if session in self.models:
                self.models.move_to_end(session)
            return self.models.get(session)

    def drop(self, session: str) -> None:
        """End the session's training at once, if any (its stream then deletes its folder), and delete its model."""
        job = self.jobs.pop(session, None)
        if job:
            job.abandon()
        with self.lock:
            old = self.models.pop(session, None)
        if old:
            shutil.rmtree(old.folder, ignore_errors=True)

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.close(grace_s=5)
        shutil.rmtree(self.root, ignore_errors=True)


def pack(folder: Path, name: str = "tinygpt-model") -> Path:
    """FOLDER/NAME.zip holding NAME/ with the weights, config and card: unzip it, then
    `python app.py --model NAME` or tinygpt.hub.TinyGPT.from_pretrained("NAME")."""
    archive = folder / f"{name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for file in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):
            zipped.write(folder / file, f"{name}/{file}")
    return archive


if __name__ == "__main__":
    sys.exit(worker())

"""What the Train tab does, without Gradio: each handler takes the visitor's session id and plain
values, so tests call them directly. tinygpt.web.train_tab lays out the tab and wires these to its
buttons; the training itself is tinygpt.training.playground's.

Errors meant for the visitor are InputError (their text or settings), TrainingError (the run) and
PushError (the upload): the tab shows each as a message.
"""

from __future__ import annotations

import html
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tinygpt.files.checkpoint import load_model
from tinygpt.hub import models as hub
from tinygpt.model.config import GPTConfig
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving.backends import TorchBackend
from tinygpt.serving.generate import InputError, complete
from tinygpt.training.playground import (
    MAX_MINUTES,
    MAX_UPLOAD_BYTES,
    MIN_MINUTES,
    TrainingJob,
    VisitorModel,
    VisitorModels,
    check_minutes,
    check_text,
    pack,
    page_recipe,
    read_upload,
)

UPDATE_INTERVAL_S = 0.5  # send the growing curve to the browser at most this often
STREAM_INTERVAL_S = 0.05  # and generated text, as the Write tab does


@dataclass(frozen=True)
class TrainSettings:
    """What the tab allows: the minutes slider's range and the recipe for a budget (tests pass a tiny one)."""

    min_minutes: float = MIN_MINUTES
    max_minutes: float = MAX_MINUTES
    recipe: Callable[[float], GPTConfig] = page_recipe
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    job: Callable[[GPTConfig, Path, Path], TrainingJob] = TrainingJob  # where a run happens (tinygpt.hub.zerogpu)


class NoModelError(InputError):
    """The session asked for its trained model before training one."""

    def __init__(self) -> None:
        super().__init__("there is no trained model in your session yet: train one first")


class PushError(RuntimeError):
    """The upload to the Hub failed: a bad name, no permission, the Hub out of reach."""


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def progress_html(fraction: float, line: str) -> str:
    return (f'<div id="train-status"><progress value="{fraction:.3f}" max="1" style="width:100%"></progress>'
            f"<div>{html.escape(line)}</div></div>")  # fmt: skip


class TrainHandlers:
    """The tab's handlers over the trained models kept in `models`, one per session."""

    def __init__(self, settings: TrainSettings, models: VisitorModels) -> None:
        self.settings = settings
        self.models = models

    def train(self, text: str, minutes: float, session: str) -> Iterator[tuple]:
        """Train a model on `text` for `minutes`; streams (progress, loss curve, latest sample,
        validation loss, model zip). The final validation loss is exact, on the text's last 10%."""
        settings, models = self.settings, self.models
        minutes = check_minutes(minutes, settings.min_minutes, settings.max_minutes)
        config = settings.recipe(minutes)
        text = check_text(text, config.block_size)
        folder = models.folder(session)
        data = folder / "text.txt"
        data.write_text(text, encoding="utf-8")
        points: list[dict] = []
        latest_sample, line, fraction, sent = "", "starting the training process", 0.0, 0.0

        def update(val_loss: float | None = None, download: str | None = None) -> tuple:
            # Until the end there is no model: the session's previous one was dropped when this one began.
            curve = pd.DataFrame(points, columns=["step", "loss", "split"])
            return progress_html(fraction, line), curve, latest_sample, val_loss, download

        yield update()
        job = settings.job(config, data, folder)
        models.jobs[session] = job
        kept = False
        try:
            for event in job.events():
                kind = event["event"]
                if kind == "start":
                    line = f"{event['params'] / 1e6:.2f}M parameters, {event['vocab_size']} characters"
                elif kind == "step":
                    points.append({"step": event["step"], "loss": event["loss"], "split": "train"})
                    fraction = event["progress"]
                    line = (f"step {event['step']} · {clock(event['elapsed_s'])} of {clock(60 * minutes)} · "
                            f"training loss {event['loss']:.3f}")  # fmt: skip
                elif kind == "eval":
                    points.append({"step": event["step"], "loss": event["val_loss"], "split": "validation"})
                elif kind == "sample":
                    latest_sample = f"[step {event['step']}]\n{event['text']}"
                elif kind == "finishing":
                    line = f"stopped at step {event['step']}: scoring the model"
                if kind != "step" or time.perf_counter() - sent >= UPDATE_INTERVAL_S:
                    sent = time.perf_counter()
                    yield update()
            summary = event["summary"]
            if models.jobs.get(session) is not job:  # the page was closed meanwhile (unload dropped the job)
                return
            models.keep(session, VisitorModel(folder, load_model(folder).eval(), summary))
            kept = True
            how = "stopped" if summary.get("stopped") else "trained"
            if "interrupted" in summary:  # a GPU call cut short (tinygpt.hub.zerogpu): what it had learned is kept
                how = f"stopped by ZeroGPU ({summary['interrupted']})"
            fraction, line = 1.0, (f"{how}: {summary['steps']} steps in {clock(summary['elapsed_s'])}, "
                                   f"validation loss {summary['val_loss']:.4f}")  # fmt: skip
            yield update(summary["val_loss"], str(pack(folder)))
        finally:
            if models.jobs.get(session) is job:
                del models.jobs[session]
            if not kept:  # it failed, or its visitor left (the page closed, the stream dropped): nobody will use it
                job.abandon()
            job.close()
            if not kept:
                shutil.rmtree(folder, ignore_errors=True)

    def stop(self, session: str) -> None:
        job = self.models.jobs.get(session)
        if job:
            job.stop()

    def generate_trained(self, session: str, prompt: str, max_new_tokens: int, temperature: float) -> Iterator[str]:
        """Continue `prompt` with the model the visitor's session trained; streams the growing text."""
        visitor = self.models.get(session)
        if visitor is None:
            raise NoModelError()
        tokenizer = CharTokenizer(visitor.model.config.vocab)
        text, steps = complete(TorchBackend(visitor.model), tokenizer, prompt, max_new_tokens, temperature)
        sent = time.perf_counter()
        for step in steps:
            text += step.chars[0]
            if time.perf_counter() - sent >= STREAM_INTERVAL_S:
                sent = time.perf_counter()
                yield text
        yield text

    def push(self, session: str, repo_id: str) -> str:
        visitor = self.models.get(session)
        if visitor is None:
            raise NoModelError()
        try:
            url = hub.push(visitor.folder, repo_id.strip())
        except Exception as err:  # a bad name, no permission, the Hub out of reach: one line
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise PushError(f"could not push to {repo_id!r}: {reason}") from None
        return f"Pushed: {url}"

    @staticmethod
    def upload(path: str) -> str:
        return read_upload(path)

    def forget(self, session: str) -> None:  # the visitor closed or reloaded the page
        self.models.drop(session)

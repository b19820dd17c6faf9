"""The Train tab on a ZeroGPU Space: each training runs on a GPU slice, attached only while it runs.

A ZeroGPU Space sets SPACES_ZERO_GPU and gives a GPU to functions decorated with `spaces.GPU` while
they run (https://huggingface.co/docs/hub/spaces-zerogpu). Generation stays on the CPU: a model this
small writes faster there than it would wait for a slice per request. Training is the one thing
worth a GPU, so `train_on_gpu` (playground.train_text on the device the slice gives) is the decorated
function, asked for the requested minutes plus a margin for start-up and the final evaluation.

What a call may ask for is bounded: ZeroGPU counts GPU time against each visitor's daily quota
(2 minutes without signing in, 5 with a free account, 40 with PRO, in the docs' "Usage Tiers") and
refuses a call that asks for more than the visitor has left. By default a call asks for at most
DEFAULT_MAX_GPU_S, a free account's whole day; the Space's variable TINYGPT_ZEROGPU_MAX_S changes it
(Settings > Variables), and the Train tab's slider stops at what it leaves for training.

A call that is refused (quota, a duration over the visitor's limit, no GPU free) or cut short (its
duration spent, preempted) ends the training with ZeroGPU's reason in the tab. What was learned up to
the last checkpoint the run wrote is scored and kept, as Stop would keep it; the queue moves on.

The decorated function is a generator: ZeroGPU streams back what it yields. It may run in another
process, so Stop reaches it through a file in the run's folder rather than a threading.Event.
Without SPACES_ZERO_GPU none of this is used and the app needs no `spaces` package.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from tinygpt.files.checkpoint import has_training_state
from tinygpt.model.config import GPTConfig
from tinygpt.serving.generate import InputError
from tinygpt.training.playground import MIN_MINUTES, TrainingError, train_text
from tinygpt.training.trainer import CHECKPOINT_FILE, Trainer

STOP_FILE = "stop"  # created in the run's folder by GpuTrainingJob.stop
MARGIN_S = 30  # start-up, the final exact validation loss and saving, beyond the training budget
MAX_GPU_S_VARIABLE = "TINYGPT_ZEROGPU_MAX_S"
DEFAULT_MAX_GPU_S = 300  # a free account's daily ZeroGPU quota (5 minutes), the most such a visitor can get
QUOTA_HINT = (
    "ZeroGPU gives each visitor a daily GPU quota: 2 minutes without signing in to Hugging Face, 5 with a "
    "free account, 40 with PRO. Sign in, pick fewer minutes or try again later."
)


def enabled() -> bool:
    """Whether this is a ZeroGPU Space (the Hub sets SPACES_ZERO_GPU there; app.py reads it too, to
    import `spaces` before torch)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("", "0", "false")


def max_gpu_seconds() -> int:
    """The most GPU time one call asks for: TINYGPT_ZEROGPU_MAX_S, else DEFAULT_MAX_GPU_S."""
    value = os.environ.get(MAX_GPU_S_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_GPU_S
    least = MARGIN_S + math.ceil(60 * MIN_MINUTES)
    if not value.isdigit() or int(value) < least:
        raise ValueError(f"{MAX_GPU_S_VARIABLE} must be a whole number of seconds, at least {least}, not {value!r}")
    return int(value)


def max_minutes(requested: float) -> float:
    """The Train tab's longest training: `requested`, or on ZeroGPU at most what a GPU call may hold
    beyond MARGIN_S, in steps of MIN_MINUTES."""
    if not enabled():
        return requested
    allowed = math.floor((max_gpu_seconds() - MARGIN_S) / 60 / MIN_MINUTES) * MIN_MINUTES
    return min(requested, allowed)


def gpu_seconds(config_json: str, data_path: str, out_dir: str) -> int:
    """The GPU time to ask for: the training budget plus MARGIN_S (ZeroGPU's dynamic duration), never
    more than max_gpu_seconds()."""
    budget = round(60 * GPTConfig.from_dict(json.loads(config_json)).minutes)
    return min(budget + MARGIN_S, max_gpu_seconds())


class _AbandonedError(Exception):
    """Raised in the training thread once nobody reads its events: it ends without the final scoring."""


def train_on_gpu(config_json: str, data_path: str, out_dir: str) -> Iterator[dict]:
    """playground.train_text on the best device here (the slice's GPU), its events yielded as they come.

    Closed before "done" (ZeroGPU cut the call short, or the visitor left), the run stops after its
    current step and saves a checkpoint, but is not scored: the caller decides what to keep."""
    events: queue.Queue[dict | None] = queue.Queue()
    stop, abandoned = threading.Event(), threading.Event()
    stop_file = Path(out_dir) / STOP_FILE

    def emit(event: dict) -> None:
        if abandoned.is_set():
            if event["event"] == "finishing":  # train_text scores and saves next: skip that
                raise _AbandonedError
            return
        events.put(event)

    def run() -> None:
        try:
            train_text(GPTConfig.from_dict(json.loads(config_json)), data_path, out_dir, emit, stop, "auto")
        except ValueError as err:  # a text the checks let through but the trainer cannot use
            events.put({"event": "error", "message": str(err)})
        except _AbandonedError:
            pass
        finally:
            events.put(None)

    def watch_stop_file() -> None:
        while training.is_alive() and not stop.wait(0.2):
            if stop_file.exists():
                stop.set()

    training = threading.Thread(target=run, name="tinygpt-gpu-training", daemon=True)
    training.start()
    threading.Thread(target=watch_stop_file, daemon=True).start()
    finished = False
    try:
        while (event := events.get()) is not None:
            yield event
            finished = event["event"] in ("done", "error")
    finally:
        if not finished:
            abandoned.set()
        stop.set()  # the run ends after its current step
        training.join(timeout=60)  # and its checkpoint is on disk when this returns


def gpu_training() -> Callable[[GPTConfig, Path, Path], GpuTrainingJob]:
    """A TrainingJob factory for the Train tab whose runs happen inside `spaces.GPU`. Call it once, at
    start-up: ZeroGPU looks for decorated functions when the Space starts."""
    import spaces  # only on a ZeroGPU Space (requirements of the staged zero-gpu folder)

    on_gpu = spaces.GPU(duration=gpu_seconds)(train_on_gpu)
    return lambda config, data_path, out_dir: GpuTrainingJob(on_gpu, config, data_path, out_dir)


def reason_of(err: BaseException) -> str:
    """An exception's message in one line (ZeroGPU's errors are gradio.Error, RuntimeError, ...)."""
    message = getattr(err, "message", None)  # gradio.Error's str() is its repr
    lines = str(message if isinstance(message, str) else err).strip().splitlines()
    return lines[0].strip().rstrip(".") if lines else type(err).__name__


class GpuTrainingJob:
    """What playground.TrainingJob offers the Train tab (events, stop, close), on a GPU slice."""

    def __init__(self, on_gpu: Callable[..., Iterator[dict]], config: GPTConfig, data_path: Path, out_dir: Path):
        self.config, self.data_path, self.out_dir = config, Path(data_path), Path(out_dir)
        (self.out_dir / STOP_FILE).unlink(missing_ok=True)
        self._events = on_gpu(config.to_json(), str(data_path), str(out_dir))

    def events(self) -> Iterator[dict]:
        """Each event as it comes; ends with "done", or raises InputError or TrainingError. A GPU call
        cut short ends with "done" too when a checkpoint holds what was learned (the summary then has
        "stopped" and "interrupted", ZeroGPU's reason)."""
        step = None  # the last step reported; None until the call has started
        while True:
            try:
                event = next(self._events)
            except StopIteration:
                event = None
                err: Exception = RuntimeError("the GPU call ended without a result")
            except Exception as raised:  # ZeroGPU refused the call or cut it short
                event, err = None, raised
            if event is None:
                yield from self._interrupted(err, step)
                return
            if event["event"] == "error":
                raise InputError(event["message"])
            step = event.get("step", step or 0)
            yield event
            if event["event"] == "done":
                return

    def _interrupted(self, err: Exception, step: int | None) -> Iterator[dict]:
        reason = reason_of(err)
        if step is None:
            raise TrainingError(f"ZeroGPU did not run the training: {reason}. {QUOTA_HINT}") from err
        checkpoint = self.out_dir / CHECKPOINT_FILE
        lost = f"ZeroGPU ended the training at step {step}, before it saved anything: {reason}. {QUOTA_HINT}"
        if not has_training_state(checkpoint):
            raise TrainingError(lost) from err
        try:
            trainer = Trainer(self.config, self.data_path, self.out_dir, device="cpu", resume=True, progress_bar=False)
        except ValueError:  # a checkpoint cut off mid-write: nothing usable
            raise TrainingError(lost) from err
        yield {"event": "finishing", "step": trainer.step}
        summary = {**trainer.finish(), "stopped": True, "interrupted": reason}
        checkpoint.unlink(missing_ok=True)  # the page never resumes
        yield {"event": "done", "summary": summary}

    def stop(self) -> None:
        """Ask the run to end after its current step; it still finishes and saves the model."""
        (self.out_dir / STOP_FILE).touch()

    def abandon(self) -> None:
        """Its visitor has left: a slice cannot be killed from here, so it stops after its current step."""
        self.stop()

    def close(self) -> None:
        self.stop()
        self._events.close()

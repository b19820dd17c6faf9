"""The Train tab on a ZeroGPU Space: each training runs on a GPU slice, attached only while it runs.

A ZeroGPU Space sets SPACES_ZERO_GPU and gives a GPU to functions decorated with `spaces.GPU` while
they run (huggingface hub-docs, docs/hub/spaces-zerogpu.md). Generation stays on the CPU: a model this
small writes faster there than it would wait for a slice per request. Training is the one thing
worth a GPU, so `train_on_gpu` (playground.train_text on the device the slice gives) is the decorated
function, asked for the requested minutes plus a margin for start-up and the final evaluation.

The decorated function is a generator: ZeroGPU streams back what it yields. It may run in another
process, so Stop reaches it through a file in the run's folder rather than a threading.Event.
Without SPACES_ZERO_GPU none of this is used and the app needs no `spaces` package.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from tinygpt.config import GPTConfig
from tinygpt.generate import InputError
from tinygpt.playground import train_text

STOP_FILE = "stop"  # created in the run's folder by GpuTrainingJob.stop
MARGIN_S = 60  # start-up, the final exact validation loss and saving, beyond the training budget


def enabled() -> bool:
    """Whether this is a ZeroGPU Space (the Hub sets the variable there)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("", "0", "false")


def gpu_seconds(config_json: str, data_path: str, out_dir: str) -> int:
    """The GPU time to ask for: the training budget plus MARGIN_S (ZeroGPU's dynamic duration)."""
    return round(60 * GPTConfig.from_dict(json.loads(config_json)).minutes) + MARGIN_S


def train_on_gpu(config_json: str, data_path: str, out_dir: str) -> Iterator[dict]:
    """playground.train_text on the best device here (the slice's GPU), its events yielded as they come."""
    events: queue.Queue[dict | None] = queue.Queue()
    stop = threading.Event()
    stop_file = Path(out_dir) / STOP_FILE

    def run() -> None:
        try:
            train_text(GPTConfig.from_dict(json.loads(config_json)), data_path, out_dir, events.put, stop, "auto")
        except ValueError as err:  # a text the checks let through but the trainer cannot use
            events.put({"event": "error", "message": str(err)})
        finally:
            events.put(None)

    def watch_stop_file() -> None:
        while training.is_alive() and not stop.wait(0.2):
            if stop_file.exists():
                stop.set()

    training = threading.Thread(target=run, name="tinygpt-gpu-training", daemon=True)
    training.start()
    threading.Thread(target=watch_stop_file, daemon=True).start()
    try:
        while (event := events.get()) is not None:
            yield event
    finally:
        stop.set()  # closed before the end (the visitor left): the run ends after its current step


def gpu_training() -> Callable[[GPTConfig, Path, Path], GpuTrainingJob]:
    """A TrainingJob factory for the Train tab whose runs happen inside `spaces.GPU`. Call it once, at
    start-up: ZeroGPU looks for decorated functions when the Space starts."""
    import spaces  # only on a ZeroGPU Space (requirements of the staged zero-gpu folder)

    on_gpu = spaces.GPU(duration=gpu_seconds)(train_on_gpu)
    return lambda config, data_path, out_dir: GpuTrainingJob(on_gpu, config, data_path, out_dir)


class GpuTrainingJob:
    """What playground.TrainingJob offers the Train tab (events, stop, close), on a GPU slice."""

    def __init__(self, on_gpu: Callable[..., Iterator[dict]], config: GPTConfig, data_path: Path, out_dir: Path):
        self.out_dir = Path(out_dir)
        (self.out_dir / STOP_FILE).unlink(missing_ok=True)
        self._events = on_gpu(config.to_json(), str(data_path), str(out_dir))

    def events(self) -> Iterator[dict]:
        """Each event as it comes; ends with "done", or raises InputError."""
        for event in self._events:
            if event["event"] == "error":
                raise InputError(event["message"])
            yield event
            if event["event"] == "done":
                return

    def stop(self) -> None:
        """Ask the run to end after its current step; it still finishes and saves the model."""
        (self.out_dir / STOP_FILE).touch()

    def abandon(self) -> None:
        """Its visitor has left: a slice cannot be killed from here, so it stops after its current step."""
        self.stop()

    def close(self) -> None:
        self.stop()
        self._events.close()

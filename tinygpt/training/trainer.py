"""The training loop: AdamW with warmup and cosine decay, mixed precision, gradient accumulation,
weight averaging, resumable checkpoints, JSON-lines logging, and DistributedDataParallel under torchrun.

Read top to bottom: the pieces of one step (learning rate, weight average, autocast, one optimisation
step), then `Trainer`, which runs them as named steps:

    set up (data, model, optimizer, resume)  ->  run(): repeat
        read the clock -> evaluate when due -> stop at a limit or on request -> one step -> checkpoint when due
    ->  finish(): the exact validation loss, the shipped weights, the last log line

and `train()`, the one call train.py, benchmarks and the page make.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from tinygpt.files.checkpoint import (
    has_training_state,
    load_training_state,
    save_model,
    save_training_state,
    tensor_digest,
    training_meta,
    write_text,
)
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.training.data import estimate_loss, get_batch, load_corpus
from tinygpt.training.evaluate import validation_loss

LOG_FILE = "train_log.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"
SHAPE_FIELDS = ("vocab", "block_size", "n_layer", "n_head", "n_embd")  # what a checkpoint's tensors fix
LOG_REDRAW_S = 30  # seconds between progress-bar redraws when stderr is a file, not a terminal


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def learning_rate(config: GPTConfig, step: int, progress: float) -> float:
    """Linear warmup over `warmup_iters` steps, then cosine decay from learning_rate to min_lr.

    `progress` (0..1) is how far through training we are: step / max_iters, or the fraction of the
    wall-clock budget used, whichever is further.
    """
    if step < config.warmup_iters:
        return config.learning_rate * (step + 1) / config.warmup_iters
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_lr + cosine * (config.learning_rate - config.min_lr)


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging).

    The average moves towards the trained weights by (1 - decay) each step; early on the decay is
    lowered so the average is not dominated by the random initial weights.
    """

    def __init__(self, model: GPT, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: GPT, step: int) -> None:
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        for averaged, current in zip(self.model.parameters(), model.parameters(), strict=True):
            averaged.lerp_(current, weight)


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision: matmuls in bfloat16 or float16, the weights and reductions stay float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


def optimization_step(
    trained: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: contextlib.AbstractContextManager,
    config: GPTConfig,
    train_ids: torch.Tensor,
    batches: torch.Generator,
) -> torch.Tensor:
    """One AdamW update: `grad_accum` random batches forward and backward under `amp`, the gradients
    clipped, then the step. `trained` is the model or its DDP wrapper. Returns the last batch's loss."""
    distributed = isinstance(trained, torch.nn.parallel.DistributedDataParallel)
    optimizer.zero_grad(set_to_none=True)
    for micro in range(config.grad_accum):
        x, y = get_batch(train_ids, config.batch_size, config.block_size, batches)
        # DDP averages the gradients over processes in backward; once per step is enough.
        last_micro = micro == config.grad_accum - 1
        with trained.no_sync() if distributed and not last_micro else contextlib.nullcontext():
            with amp:
                _, loss = trained(x, y)
            scaler.scale(loss / config.grad_accum).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(trained.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss


class StopRequest:
    """Ctrl-C or SIGTERM during training sets `event`: the run finishes its step, saves a checkpoint and
    stops. A second Ctrl-C stops at once. Another thread (the page's Stop button) may set `event` too."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def trim_log(path: Path, step: int) -> int:
    """Keep only the log records up to `step`, the checkpoint being resumed: later ones belong to steps
    that will be trained again, and a kill can cut the last line short. Returns the last step kept."""
    kept, last = [], -1
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
            record = json.loads(line)
            if record["step"] <= step and "final" not in record:
                kept.append(line + "\n")
                last = record["step"]
    write_text(path, "".join(kept))
    return last


def check_same_shape(saved: GPTConfig, config: GPTConfig, checkpoint: Path) -> None:
    """A checkpoint's tensors fit only a model of its own shape and vocabulary; other settings
    (max_iters, minutes, learning rate, ...) may change when resuming."""
    for name in SHAPE_FIELDS:
        if getattr(saved, name) != getattr(config, name):
            if name == "vocab":
                raise ValueError(f"{checkpoint} was trained on text with another alphabet: resume with the same --data")
            raise ValueError(
                f"{checkpoint} holds a model of another shape ({name} {getattr(saved, name)}, "
                f"not {getattr(config, name)}): resume with the same shape, or train afresh in another --out"
            )


def join_processes(device: str) -> str:
    """Under torchrun, join the process group (NCCL on GPUs, gloo on CPUs); returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device == "cuda" and dist.is_initialized():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    return device


def leave_processes() -> None:
    if dist.is_initialized():  # leave together: one that tears down while rank 0 still saves can abort gloo
        dist.barrier()
        dist.destroy_process_group()


StepCallback = Callable[[dict], None]


class Trainer:
    """One training run of `config` on a text file, writing to `out_dir`.

    `run()` trains until max_iters steps or `config.minutes` of wall clock (the learning-rate schedule
    ends with whichever comes first), or until `stop` is set (Ctrl-C sets it too); then `finish()`
    scores the model exactly and writes OUT/model.safetensors, config.json, README.md (the model card)
    and the log. OUT/checkpoint.safetensors is written every `checkpoint_interval` steps and at the
    end, and `resume=True` continues from it (the model's shape must match; limits may be extended).

    `on_step` receives {step, loss, lr, elapsed_s, progress} after every step and `on_eval` each log
    record (the loss estimates). Both run in the training thread between steps, so they may read
    `model` or `shipped_model` safely, e.g. to sample from it. `threads` sets torch's CPU threads for
    the thread that calls run(). Under torchrun every process trains a replica on its own batches
    (DistributedDataParallel) and only rank 0 writes files.
    """

    def __init__(
        self,
        config: GPTConfig,
        data_path: str | Path,
        out_dir: str | Path,
        *,
        device: str = "auto",
        resume: bool = False,
        checkpoint_interval: int = 500,
        progress_bar: bool = True,
        threads: int = 0,
        stop: threading.Event | None = None,
        on_step: StepCallback | None = None,
        on_eval: StepCallback | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.data_name = Path(data_path).name
        self.checkpoint = self.out_dir / CHECKPOINT_FILE
        self.log_path = self.out_dir / LOG_FILE
        self.checkpoint_interval, self.progress_bar, self.threads = checkpoint_interval, progress_bar, threads
        self.stop = stop or threading.Event()
        self.on_step, self.on_eval = on_step, on_eval
        self.device = join_processes(pick_device(device))
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.is_main = self.rank == 0

        tokenizer, train_ids, val_ids = load_corpus(data_path, config.block_size)
        self.train_ids, self.val_ids = train_ids.to(self.device), val_ids.to(self.device)
        self.config = replace(config, vocab=tokenizer.vocab)  # the caller's config is left as it was
        self._build_model_and_optimizer()
        self.step, self.elapsed = 0, 0.0
        if resume:
            self._resume()
        self.trained = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.amp = autocast(self.device, self.config.dtype)

    # --- Setting up --------------------------------------------------------------------------------

    def _build_model_and_optimizer(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        self.model = GPT(config).to(self.device)
        self.optimizer = self.model.configure_optimizer()
        # float16 needs its loss scaled so small gradients do not underflow; disabled, the scaler is a no-op.
        self.scaler = torch.amp.GradScaler(self.device.split(":")[0], enabled=config.dtype == "float16")
        # Each rank draws its own batches; the checkpointed state is rank 0's.
        self.batches = torch.Generator().manual_seed(config.seed + self.rank)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay > 0 else None

    def _resume(self) -> None:
        if not has_training_state(self.checkpoint):
            if self.is_main:
                print(f"no checkpoint in {self.out_dir}: starting from step 0")
            return
        check_same_shape(GPTConfig.from_dict(training_meta(self.checkpoint)["config"]), self.config, self.checkpoint)
        averaged = self.average.model if self.average else None
        meta = load_training_state(self.checkpoint, self.model, self.optimizer, self.batches, averaged)
        self.step, self.elapsed = meta["step"], meta["elapsed"]
        if "scaler" in meta:
            self.scaler.load_state_dict(meta["scaler"])
        if self.rank:  # only rank 0's batch stream was saved; the others restart theirs, still distinct
            self.batches.manual_seed(self.config.seed + self.rank + 1_000_003 * self.step)

    @property
    def shipped_model(self) -> GPT:
        """What training ships: the weight average if there is one, else the trained weights."""
        return self.average.model if self.average else self.model

    def progress(self) -> float:
        """How far through training (1: done): the larger of the step and wall-clock fractions used."""
        config = self.config
        by_steps = self.step / config.max_iters if config.max_iters else 0.0
        by_clock = self.elapsed / (60 * config.minutes) if config.minutes else 0.0
        return max(by_steps, by_clock)

    # --- The loop ----------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train to a limit and `finish()`; if stopped first, save a checkpoint and return
        {steps, elapsed_s, stopped: True} (call finish() then to keep the weights as they are)."""
        if self.threads:
            torch.set_num_threads(self.threads)
        last_logged = self._start_log()
        # In a terminal the bar redraws in place; in a log file (nohup train.py > log) every redraw is a line.
        bar = tqdm(total=self.config.max_iters or None, initial=self.step, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else LOG_REDRAW_S,
                   disable=not (self.is_main and self.progress_bar))  # fmt: skip
        start = time.perf_counter() - self.elapsed
        with StopRequest(self.stop):
            while True:
                stopping = self._read_clock(start)
                done = self.progress() >= 1
                lr = learning_rate(self.config, self.step, self.progress())
                if self.is_main and (done or self.step % self.config.eval_interval == 0) and self.step > last_logged:
                    self.evaluate(lr)
                    last_logged = self.step
                if done or stopping:
                    break
                loss = self.train_step(lr)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.1e}", refresh=False)  # drawn by update, when due
                bar.update()
                if self.step % self.checkpoint_interval == 0:
                    self.elapsed = time.perf_counter() - start
                    self.save_checkpoint()
        bar.close()
        self.elapsed = time.perf_counter() - start
        self.save_checkpoint()
        if not stopping:
            return self.finish()
        if self.is_main:
            print(f"stopped at step {self.step}; checkpoint saved in {self.checkpoint}, continue with --resume")
        return {"steps": self.step, "elapsed_s": round(self.elapsed, 1), "stopped": True}

    def _read_clock(self, start: float) -> bool:
        """Update `elapsed`; returns whether a stop was requested. Under torchrun every process takes
        the same decisions: the slowest clock, anyone's stop."""
        self.elapsed, stopping = time.perf_counter() - start, self.stop.is_set()
        if self.world > 1:
            shared = torch.tensor([self.elapsed, float(stopping)], dtype=torch.float64, device=self.device)
            dist.all_reduce(shared, op=dist.ReduceOp.MAX)
            self.elapsed, stopping = shared[0].item(), bool(shared[1].item())
        return stopping

    def train_step(self, lr: float) -> float:
        """One optimisation step at learning rate `lr`, then the weight average; returns the loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = optimization_step(
            self.trained, self.optimizer, self.scaler, self.amp, self.config, self.train_ids, self.batches
        ).item()
        if self.average:
            self.average.update(self.model, self.step)
        self.step += 1
        if self.on_step:
            progress = min(self.progress(), 1.0)
            self.on_step({"step": self.step, "loss": loss, "lr": lr, "elapsed_s": self.elapsed, "progress": progress})
        return loss

    def evaluate(self, lr: float) -> dict:
        """Train and validation loss estimates (and the average's), logged, printed and passed to on_eval."""

        def same_batches() -> torch.Generator:  # at every evaluation, so the curve moves only when the model does
            return torch.Generator().manual_seed(self.config.seed + 1)

        config = self.config
        with self.amp:
            splits = {"train": self.train_ids, "val": self.val_ids}
            losses = estimate_loss(self.model, splits, config.eval_iters, config.batch_size, same_batches())
            if self.average:
                val = {"val": self.val_ids}
                losses["ema_val"] = estimate_loss(self.average.model, val, config.eval_iters, config.batch_size,
                                                  same_batches())["val"]  # fmt: skip
        record = {"step": self.step, **{f"{k}_loss": round(v, 4) for k, v in losses.items()},
                  "lr": lr, "elapsed_s": round(self.elapsed, 1)}  # fmt: skip
        self._append_log(record)
        averaged = f", averaged val {losses['ema_val']:.4f}" if self.average else ""
        tqdm.write(f"step {self.step}: train {losses['train']:.4f}, val {losses['val']:.4f}{averaged}, lr {lr:.2e}")
        if self.on_eval:
            self.on_eval(record)
        return record

    def save_checkpoint(self) -> None:
        if self.is_main:
            meta = {"step": self.step, "elapsed": self.elapsed}
            if self.scaler.is_enabled():
                meta["scaler"] = self.scaler.state_dict()
            averaged = self.average.model if self.average else None
            save_training_state(self.checkpoint, self.model, self.optimizer, self.batches, meta, averaged)

    # --- The end -----------------------------------------------------------------------------------

    def finish(self) -> dict:
        """Score the shipped weights exactly and save them; returns the summary: steps, seconds,
        parameters, the weights' sha256 (per rank too under torchrun) and, on rank 0, the val loss."""
        shipped = self.shipped_model
        summary = {"steps": self.step, "elapsed_s": round(self.elapsed, 1), "params": self.model.num_params(),
                   "sha256": tensor_digest(shipped.state_dict())}  # fmt: skip
        if self.world > 1:  # DDP keeps the replicas identical; report every rank's weights to show it
            summary["sha256_per_rank"] = [None] * self.world
            dist.all_gather_object(summary["sha256_per_rank"], summary["sha256"])
        if self.is_main:
            self.model.eval()
            if self.average:  # the last step's weights, for comparison with the shipped average
                summary["last_step_val_loss"] = validation_loss(self.model, self.val_ids)["val_loss"]
            summary.update(validation_loss(shipped, self.val_ids), data=self.data_name, hardware=self._hardware())
            save_model(shipped, self.out_dir, summary)
            self._append_log({"step": self.step, "final": summary})
        return summary

    # --- Files -------------------------------------------------------------------------------------

    def _start_log(self) -> int:
        """A fresh log, or the resumed one cut back to the checkpoint; returns the last step logged."""
        if not self.is_main:
            return -1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        recipe = {name: value for name, value in asdict(self.config).items() if name != "vocab"}
        print(f"recipe: {json.dumps(recipe)}")
        print(f"{self.model.num_params() / 1e6:.2f}M parameters, vocabulary {self.config.vocab_size}, "
              f"device {self.device}, world {self.world}")  # fmt: skip
        if self.step:
            return trim_log(self.log_path, self.step)
        write_text(self.log_path, "")
        return -1

    def _append_log(self, record: dict) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")

    def _hardware(self) -> str:
        device = self.device
        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{device} ({os.cpu_count()} cores)"
        return name if self.world == 1 else f"{self.world} processes, {name} each"


def train(config: GPTConfig, data_path: str | Path, out_dir: str | Path, **options: Any) -> dict:
    """Train a model on a text file into `out_dir` and return the summary. `options` are Trainer's
    (device, resume, checkpoint_interval, progress_bar, threads, stop, on_step, on_eval). Under
    torchrun, every process leaves the group together at the end."""
    summary = Trainer(config, data_path, out_dir, **options).run()
    leave_processes()
    return summary

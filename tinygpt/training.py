"""The training loop: AdamW with warmup and cosine decay, bf16 autocast, resumable checkpoints,
JSON-lines logging, and data-parallel training when started with torchrun."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from tinygpt.checkpoint import (
    has_training_state,
    load_training_state,
    save_model,
    save_training_state,
    training_meta,
)
from tinygpt.config import GPTConfig
from tinygpt.data import estimate_loss, get_batch, load_splits
from tinygpt.evaluate import validation_loss
from tinygpt.model import GPT

LOG_FILE = "train_log.jsonl"
CHECKPOINT_DIR = "checkpoint"


class StopRequest:
    """Ctrl-C or SIGTERM during training: finish the current step, save a checkpoint, then stop.

    A second Ctrl-C stops at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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

    `progress` (0..1) is how far through training we are: step / max_iters, or the fraction of a
    wall-clock budget used.
    """
    if step < config.warmup_iters:
        return config.learning_rate * (step + 1) / config.warmup_iters
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_lr + cosine * (config.learning_rate - config.min_lr)


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world


def train(
    config: GPTConfig,
    data_path: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    resume: bool = False,
    checkpoint_interval: int = 500,
    time_budget_s: float | None = None,
    progress_bar: bool = True,
) -> dict:
    """Train a model on a text file and write OUT/model.safetensors, OUT/config.json and the log.

    Returns a summary: steps, seconds, parameters and the exact validation loss.
    """
    out_dir = Path(out_dir)
    rank, world = _distributed()
    is_main = rank == 0
    device = pick_device(device)
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)

    tokenizer, train_ids, val_ids = load_splits(data_path)
    if len(val_ids) <= config.block_size or len(train_ids) <= config.block_size:
        raise ValueError(f"{data_path} is too short for block_size {config.block_size}: use a smaller --block-size")
    config.vocab = tokenizer.vocab
    train_ids, val_ids = train_ids.to(device), val_ids.to(device)

    torch.manual_seed(config.seed)
    model = GPT(config).to(device)
    optimizer = model.configure_optimizer()
    # Each rank draws its own batches; the checkpointed state is rank 0's.
    batches = torch.Generator(device=train_ids.device).manual_seed(config.seed + rank)
    step, elapsed = 0, 0.0
    checkpoint = out_dir / CHECKPOINT_DIR
    if resume and has_training_state(checkpoint):
        if training_meta(checkpoint)["config"] != asdict(config):
            raise ValueError(f"{checkpoint} was made with other hyperparameters; start afresh or pass the same flags")
        meta = load_training_state(checkpoint, model, optimizer, batches)
        step, elapsed = meta["step"], meta["elapsed"]
        if rank:  # only rank 0's batch stream was saved; the others restart theirs, still distinct
            batches.manual_seed(config.seed + rank + 1_000_003 * step)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if config.bf16
        else contextlib.nullcontext()
    )
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log = open(out_dir / LOG_FILE, "a" if step else "w")  # noqa: SIM115 - closed below
        print(
            f"{model.num_params() / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}, device {device}, world {world}"
        )

    def save_checkpoint() -> None:
        if is_main:
            save_training_state(checkpoint, model, optimizer, batches, {"step": step, "elapsed": elapsed})

    def log_losses(lr: float) -> None:
        # Same batches at every evaluation, so the curve moves only when the model does.
        with autocast:
            losses = estimate_loss(
                model,
                {"train": train_ids, "val": val_ids},
                config.eval_iters,
                config.batch_size,
                torch.Generator(device=train_ids.device).manual_seed(config.seed + 1),
            )
        if is_main:
            record = {"step": step, "train_loss": round(losses["train"], 4), "val_loss": round(losses["val"], 4),
                      "lr": lr, "elapsed_s": round(elapsed, 1)}  # fmt: skip
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.write(f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}, lr {lr:.2e}")

    bar = tqdm(total=config.max_iters, initial=step, disable=not (is_main and progress_bar), dynamic_ncols=True)
    resumed_at = step
    start = time.perf_counter() - elapsed
    with StopRequest() as stop:
        while True:
            elapsed = time.perf_counter() - start
            done = step >= config.max_iters or (time_budget_s is not None and elapsed >= time_budget_s)
            progress = elapsed / time_budget_s if time_budget_s else step / config.max_iters
            lr = learning_rate(config, step, progress)
            if done or (step % config.eval_interval == 0 and (step == 0 or step != resumed_at)):
                log_losses(lr)
            if done or stop.requested:
                break

            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(train_ids, config.batch_size, config.block_size, batches)
            with autocast:
                _, loss = trained(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}")
            if step % checkpoint_interval == 0:
                elapsed = time.perf_counter() - start
                save_checkpoint()
    bar.close()
    elapsed = time.perf_counter() - start
    save_checkpoint()
    if stop.requested:
        if is_main:
            log.close()
            print(f"stopped at step {step}; checkpoint saved in {checkpoint}, continue with --resume")
        return {"steps": step, "elapsed_s": round(elapsed, 1), "stopped": True}

    summary = {"steps": step, "elapsed_s": round(elapsed, 1), "params": model.num_params()}
    if is_main:
        save_model(model, out_dir)
        model.eval()
        summary.update(validation_loss(model, val_ids.cpu() if device != "cpu" else val_ids))
        log.write(json.dumps({"step": step, "final": summary}) + "\n")
        log.close()
    if world > 1:
        dist.destroy_process_group()
    return summary

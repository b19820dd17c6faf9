"""The training loop: AdamW with warmup and cosine decay, mixed precision, gradient accumulation,
resumable checkpoints, JSON-lines logging, and DistributedDataParallel when started with torchrun."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from tinygpt.checkpoint import (
    has_training_state,
    load_training_state,
    save_model,
    save_training_state,
    tensor_digest,
    training_meta,
    write_text,
)
from tinygpt.config import GPTConfig
from tinygpt.data import estimate_loss, get_batch, load_splits
from tinygpt.evaluate import validation_loss
from tinygpt.model import GPT

LOG_FILE = "train_log.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"


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


def _distributed(device: str) -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return int(os.environ.get("RANK", "0")), world


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


def _hardware(device: str, world: int) -> str:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{device} ({os.cpu_count()} cores)"
    return name if world == 1 else f"{world} processes, {name} each"


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
    """Train a model on a text file and write OUT/model.safetensors, OUT/config.json, OUT/README.md
    (the model card) and the log; OUT/checkpoint.safetensors lets `resume` continue where it stopped.

    Under torchrun every process trains a replica on its own batches (DistributedDataParallel) and
    only rank 0 writes files. Returns a summary: steps, seconds, parameters, the weights' sha256 (per
    rank too under torchrun) and, on rank 0, the exact validation loss.
    """
    out_dir = Path(out_dir)
    device = pick_device(device)
    rank, world = _distributed(device)
    is_main = rank == 0
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
    # float16 needs its loss scaled so small gradients do not underflow; disabled, the scaler is a no-op.
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=config.dtype == "float16")
    # Each rank draws its own batches; the checkpointed state is rank 0's.
    batches = torch.Generator().manual_seed(config.seed + rank)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    step, elapsed = 0, 0.0
    checkpoint = out_dir / CHECKPOINT_FILE
    if resume and has_training_state(checkpoint):
        if GPTConfig.from_dict(training_meta(checkpoint)["config"]) != config:
            raise ValueError(f"{checkpoint} was made with other hyperparameters; start afresh or pass the same flags")
        meta = load_training_state(checkpoint, model, optimizer, batches, average and average.model)
        step, elapsed = meta["step"], meta["elapsed"]
        if "scaler" in meta:
            scaler.load_state_dict(meta["scaler"])
        if rank:  # only rank 0's batch stream was saved; the others restart theirs, still distinct
            batches.manual_seed(config.seed + rank + 1_000_003 * step)
    elif resume and is_main:
        print(f"no checkpoint in {out_dir}: starting from step 0")
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    amp = autocast(device, config.dtype)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        last_logged = trim_log(out_dir / LOG_FILE, step) if step else -1
        log = open(out_dir / LOG_FILE, "a" if step else "w")  # noqa: SIM115 - closed below
        print(
            f"{model.num_params() / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}, device {device}, world {world}"
        )

    def save_checkpoint() -> None:
        if is_main:
            meta = {"step": step, "elapsed": elapsed} | ({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})
            save_training_state(checkpoint, model, optimizer, batches, meta, average and average.model)

    def log_losses(lr: float) -> None:
        def same_batches() -> torch.Generator:  # at every evaluation, so the curve moves only when the model does
            return torch.Generator().manual_seed(config.seed + 1)

        with amp:
            splits = {"train": train_ids, "val": val_ids}
            losses = estimate_loss(model, splits, config.eval_iters, config.batch_size, same_batches())
            if average:
                val = {"val": val_ids}
                losses["ema_val"] = estimate_loss(average.model, val, config.eval_iters, config.batch_size,
                                                  same_batches())["val"]  # fmt: skip
        record = {"step": step, **{f"{k}_loss": round(v, 4) for k, v in losses.items()},
                  "lr": lr, "elapsed_s": round(elapsed, 1)}  # fmt: skip
        log.write(json.dumps(record) + "\n")
        log.flush()
        ema_text = f", averaged val {losses['ema_val']:.4f}" if average else ""
        bar.write(f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}{ema_text}, lr {lr:.2e}")

    bar = tqdm(total=config.max_iters, initial=step, disable=not (is_main and progress_bar), dynamic_ncols=True)
    start = time.perf_counter() - elapsed
    with StopRequest() as stop:
        while True:
            elapsed, stopping = time.perf_counter() - start, stop.requested
            if world > 1:  # all processes take the same decisions: the slowest clock, anyone's Ctrl-C
                shared = torch.tensor([elapsed, float(stopping)], dtype=torch.float64, device=device)
                dist.all_reduce(shared, op=dist.ReduceOp.MAX)
                elapsed, stopping = shared[0].item(), bool(shared[1].item())
            done = step >= config.max_iters or (time_budget_s is not None and elapsed >= time_budget_s)
            progress = elapsed / time_budget_s if time_budget_s else step / config.max_iters
            lr = learning_rate(config, step, progress)
            if is_main and (done or step % config.eval_interval == 0) and step > last_logged:
                log_losses(lr)
                last_logged = step
            if done or stopping:
                break

            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = optimization_step(trained, optimizer, scaler, amp, config, train_ids, batches)
            if average:
                average.update(model, step)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}")
            if step % checkpoint_interval == 0:
                elapsed = time.perf_counter() - start
                save_checkpoint()
    bar.close()
    elapsed = time.perf_counter() - start
    save_checkpoint()
    shipped = average.model if average else model
    summary = {"steps": step, "elapsed_s": round(elapsed, 1)}
    if stopping:
        summary["stopped"] = True
        if is_main:
            print(f"stopped at step {step}; checkpoint saved in {checkpoint}, continue with --resume")
    else:
        summary.update(params=model.num_params(), sha256=tensor_digest(shipped.state_dict()))
        if world > 1:  # DDP keeps the replicas identical; report every rank's weights to show it
            summary["sha256_per_rank"] = [None] * world
            dist.all_gather_object(summary["sha256_per_rank"], summary["sha256"])
        if is_main:
            model.eval()
            if average:  # the last step's weights, for comparison with the shipped average
                summary["last_step_val_loss"] = validation_loss(model, val_ids)["val_loss"]
            summary.update(validation_loss(shipped, val_ids), data=Path(data_path).name)
            summary["hardware"] = _hardware(device, world)
            save_model(shipped, out_dir, summary)
            log.write(json.dumps({"step": step, "final": summary}) + "\n")
    if is_main:
        log.close()
    if world > 1:  # leave together: a process that tears down while rank 0 still saves can abort in gloo
        dist.barrier()
        dist.destroy_process_group()
    return summary

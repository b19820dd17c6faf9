"""Time one training step of the default recipe in each autocast precision, side by side.

    python benchmarks/train_step.py                      # bfloat16 and float32
    python benchmarks/train_step.py --dtypes bfloat16 float32 float16 --steps 3

A step is `tinygpt.training.optimization_step`, as `train` runs it: a batch of the training split,
forward and backward under autocast, gradient clipping and an AdamW update. Each precision gets the same initial weights
and batches, one warm-up step, then the median of `--steps` timed steps. Prints one JSON line per
precision, then a summary line with each one's time relative to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.model.config import DTYPES, GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.training.data import load_splits
from tinygpt.training.trainer import autocast, optimization_step


def step_seconds(config: GPTConfig, train_ids: torch.Tensor, steps: int) -> list[float]:
    torch.manual_seed(config.seed)
    model = GPT(config)
    optimizer = model.configure_optimizer()
    scaler = torch.amp.GradScaler("cpu", enabled=config.dtype == "float16")
    batches = torch.Generator().manual_seed(config.seed)
    amp = autocast("cpu", config.dtype)
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels; it is not timed
        start = time.perf_counter()
        optimization_step(model, optimizer, scaler, amp, config, train_ids, batches)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per precision")
    args = parser.parse_args()

    tokenizer, train_ids, _ = load_splits(DEFAULT_DATA)
    results = []
    for dtype in args.dtypes:
        config = GPTConfig(vocab=tokenizer.vocab, dtype=dtype)
        times = step_seconds(config, train_ids, args.steps)
        median = statistics.median(times)
        result = {
            "dtype": dtype,
            "step_s": round(median, 3),
            "tokens_per_s": round(config.batch_size * config.block_size / median),
            "steps_timed": len(times),
            "threads": torch.get_num_threads(),
        }
        results.append(result)
        print(json.dumps(result), flush=True)
    baseline = results[0]
    print(json.dumps({"relative_step_time": {r["dtype"]: round(r["step_s"] / baseline["step_s"], 2) for r in results}}))


if __name__ == "__main__":
    main()

"""Train the default recipe for a fixed wall-clock budget, then evaluate it exactly.

    python benchmarks/train_budget.py --minutes 10

The learning-rate schedule follows the clock (warmup, then cosine decay that ends when the budget
does), so every budget gets a complete schedule. Prints one JSON line: val_loss, bpc, steps,
tokens/s and the achieved GFLOP/s (training FLOPs per token ~ 6 x parameters + 12 x L x T x N for
attention, as in the PaLM / nanoGPT estimate).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinygpt.config import GPTConfig
from tinygpt.data import DEFAULT_DATA
from tinygpt.training import train


def training_flops_per_token(config: GPTConfig, params: int) -> float:
    position_params = config.block_size * config.n_embd  # a lookup, not a matmul
    return 6 * (params - position_params) + 12 * config.n_layer * config.block_size * config.n_embd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fp32", action="store_true", help="train in float32, without bfloat16 autocast, to compare")
    args = parser.parse_args()

    config = GPTConfig(max_iters=0, minutes=args.minutes, dtype="float32" if args.fp32 else "bfloat16")
    with tempfile.TemporaryDirectory() as out:
        summary = train(config, args.data, out, device=args.device, progress_bar=False)
    tokens_per_s = summary["steps"] * config.batch_size * config.block_size / summary["elapsed_s"]
    result = {
        "minutes": args.minutes,
        "dtype": config.dtype,
        "val_loss": summary["val_loss"],
        "bpc": summary["bpc"],
        "steps": summary["steps"],
        "tokens_per_s": round(tokens_per_s),
        "gflops_per_s": round(tokens_per_s * training_flops_per_token(config, summary["params"]) / 1e9, 1),
        "params": summary["params"],
        "train_seconds": summary["elapsed_s"],
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

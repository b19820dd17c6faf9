"""Train the `--minutes M` preset for M minutes of wall clock, then score it exactly; with --baseline,
then train nanoGPT's CPU recipe for the same M, in the same run.

    python benchmarks/train_budget.py --minutes 10              # the preset alone, on every core
    python benchmarks/train_budget.py --minutes 10 --baseline   # the preset, then the baseline (2 x M minutes)

The baseline is the "shakespeare on a MacBook" recipe of nanoGPT's README (4 layers, 4 heads, width
128, context 64, batch 12, no dropout, learning rate 1e-3 with 100 warmup steps and cosine decay to
1e-4, AdamW beta2 0.99, weight decay 0.1, float32 as nanoGPT runs on a CPU), trained by this
project's trainer. Both schedules follow the clock: warmup, then a cosine decay that ends when the
budget does. With --baseline the two recipes train one after the other, each in its own process on
every core, as `train.py --minutes M` would run for a user; the load average while each ran is
recorded (compare only runs on a quiet machine).

Prints one JSON line: per recipe the exact validation loss (tinygpt.evaluate's protocol, at the
recipe's own context length), steps, tokens/s and its hyperparameters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.model.config import GPTConfig, budget_recipe
from tinygpt.training.trainer import train

# fmt: off
BASELINE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
                learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, weight_decay=0.1, beta2=0.99,
                dtype="float32", ema_decay=0.0)
# fmt: on


def recipe(name: str, minutes: float) -> GPTConfig:
    if name == "baseline":
        return GPTConfig(**BASELINE, max_iters=0, minutes=minutes)
    return budget_recipe(minutes)


def train_one(name: str, minutes: float, data: str, threads: int, keep: str | None) -> dict:
    """Train one recipe for `minutes` (into KEEP/NAME if given) and return its figures."""
    config = recipe(name, minutes)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(keep) / name if keep else scratch
        summary = train(config, data, out, device="cpu", threads=threads, progress_bar=False)
    return {
        "val_loss": summary["val_loss"],
        "bpc": summary["bpc"],
        "block_size": config.block_size,
        "steps": summary["steps"],
        "tokens_per_s": round(summary["steps"] * config.batch_size * config.block_size / summary["elapsed_s"]),
        "params": summary["params"],
        "train_seconds": summary["elapsed_s"],
        "threads": threads or torch.get_num_threads(),
        "recipe": {k: v for k, v in asdict(config).items() if k != "vocab"},
    }


def one_after_another(minutes: float, data: str, threads: int, keep: str | None) -> dict:
    """The preset, then the baseline, each in a fresh process on `threads` threads; with each result,
    the machine's load average (1 minute), sampled while it ran."""
    command = [sys.executable, __file__, "--minutes", str(minutes), "--data", data, "--threads", str(threads)]
    command += ["--keep", keep] if keep else []
    results = {}
    for name in ("ours", "baseline"):
        with tempfile.TemporaryFile("w+") as out:
            process = subprocess.Popen([*command, "--only", name], stdout=out)
            load = []
            while process.poll() is None:
                load.append(os.getloadavg()[0])
                time.sleep(5)
            if process.returncode:
                raise SystemExit(f"the {name} run failed (exit status {process.returncode})")
            out.seek(0)
            results[name] = json.loads(out.read().splitlines()[-1])
        results[name]["load_average"] = {"mean": round(sum(load) / len(load), 2), "max": round(max(load), 2)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training budget")
    parser.add_argument("--baseline", action="store_true", help="then train nanoGPT's CPU recipe for as long")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="UTF-8 corpus (default: Tiny Shakespeare)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for each run (0: torch's default)")
    parser.add_argument("--keep", metavar="DIR", help="keep the trained models in DIR/ours and DIR/baseline")
    parser.add_argument("--only", choices=("ours", "baseline"), help=argparse.SUPPRESS)  # one side of a comparison
    args = parser.parse_args()

    if args.only:
        print(json.dumps(train_one(args.only, args.minutes, args.data, args.threads, args.keep)))
        return
    if args.baseline:
        result = {"minutes": args.minutes, **one_after_another(args.minutes, args.data, args.threads, args.keep)}
        result["ours_minus_baseline"] = round(result["ours"]["val_loss"] - result["baseline"]["val_loss"], 5)
    else:
        result = {"minutes": args.minutes, "ours": train_one("ours", args.minutes, args.data, args.threads, args.keep)}
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Draw train and validation loss against step from a training log (JSON lines).

python tools/plot_log.py weights/train_log.jsonl weights/loss_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()

    records = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    curve = [r for r in records if "val_loss" in r and "final" not in r]
    final = next((r["final"] for r in records if "final" in r), None)
    steps = [r["step"] for r in curve]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(steps, [r["train_loss"] for r in curve], label="train (estimate)")
    ax.plot(steps, [r["val_loss"] for r in curve], label="validation (estimate)")
    if all("ema_val_loss" in r for r in curve):  # runs with --ema-decay also track the averaged weights
        ax.plot(steps, [r["ema_val_loss"] for r in curve], label="validation, averaged weights (estimate)")
    if final:
        ax.axhline(
            final["val_loss"], color="gray", ls="--", lw=1, label=f"final exact val loss {final['val_loss']:.4f}"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_ylim(top=min(3.0, max(r["val_loss"] for r in curve)))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Tiny_GPT on Tiny Shakespeare")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

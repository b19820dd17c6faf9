"""Train a character-level GPT on a text file.

    python train.py                         # the shipped recipe, on data/tinyshakespeare.txt
    python train.py --data my.txt --out runs/mine --minutes 10   # the best recipe we know for 10 minutes
    python train.py --data my.txt --out runs/mine --max-iters 2000
    python train.py --resume                # continue from OUT/checkpoint.safetensors
    python train.py --resume --minutes 20   # continue, and extend the budget (or --max-iters)
    python train.py --push-to-hub USER/NAME # then publish OUT on the Hugging Face Hub
    torchrun --standalone --nproc-per-node 4 train.py   # data parallel over 4 processes (GPUs or CPU)

Every hyperparameter of tinygpt.config.GPTConfig is a flag. Unset ones come from the shipped recipe,
or with --minutes from the preset for the nearest budget (tinygpt.config.BUDGET_PRESETS), or with
--resume from the checkpoint; the flags given override them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from tinygpt.files.checkpoint import WEIGHTS_DIR, has_training_state, training_meta
from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.hub import models as hub
from tinygpt.model.config import DTYPES, GPTConfig, budget_recipe
from tinygpt.training.trainer import CHECKPOINT_FILE, train


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="UTF-8 text file to train on")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="where model.safetensors, config.json and the log go")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors if it exists")
    parser.add_argument("--checkpoint-interval", type=int, default=500, help="steps between resumable checkpoints")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (evaluations still print)")
    parser.add_argument("--push-to-hub", metavar="USER/NAME", help="after training, upload OUT as this Hub model repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    hyper = parser.add_argument_group(
        "hyperparameters (tinygpt.config.GPTConfig)",
        "defaults: the shipped recipe's; with --minutes, the preset's; with --resume, the checkpoint's",
    )
    for spec in fields(GPTConfig):
        if spec.name == "vocab":  # comes from the corpus
            continue
        # Unset flags stay out of the namespace (SUPPRESS), so the recipe knows which ones were given.
        flag, meaning = "--" + spec.name.replace("_", "-"), f"{spec.metadata['help']} (default: {spec.default})"
        if spec.name == "dtype":
            hyper.add_argument(flag, choices=DTYPES, default=argparse.SUPPRESS, help=meaning)
        else:
            kind = {"int": int, "float": float}[spec.type]
            hyper.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=kind.__name__.upper(), help=meaning)
    return parser.parse_args(argv)


def recipe(args: argparse.Namespace) -> GPTConfig:
    """The config to train: the checkpoint's when resuming, else the preset for --minutes, else the
    shipped recipe; with the hyperparameter flags given on top."""
    given = {spec.name: getattr(args, spec.name) for spec in fields(GPTConfig) if hasattr(args, spec.name)}
    checkpoint = Path(args.out) / CHECKPOINT_FILE
    if args.resume and has_training_state(checkpoint):
        base = GPTConfig.from_dict(training_meta(checkpoint)["config"])
    elif given.get("minutes"):
        base = budget_recipe(given["minutes"])
    else:
        base = GPTConfig()
    return replace(base, **given)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.push_to_hub:  # a typo should fail now, not after hours of training
            from huggingface_hub.utils import validate_repo_id

            validate_repo_id(args.push_to_hub)
        summary = train(
            recipe(args),
            args.data,
            args.out,
            device=args.device,
            resume=args.resume,
            checkpoint_interval=args.checkpoint_interval,
            progress_bar=not args.no_progress,
            threads=args.threads,
        )
    except (OSError, ValueError) as err:  # bad flags or data, a full disk, a corrupt checkpoint (WeightsError)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop now; the last checkpoint is intact
        print(f"interrupted; the last checkpoint in {args.out} is intact (--resume continues from it)", file=sys.stderr)
        return 130
    if summary.get("val_loss") is None:  # stopped early, or not rank 0
        return 0
    print(json.dumps(summary))
    if args.push_to_hub:
        try:
            print(f"uploaded to {hub.push(args.out, args.push_to_hub, args.private)}")
        except Exception as err:  # network, authentication, broken weights: the files stay in OUT
            print(f"error: could not push to the Hub ({err}); retry with: python -m tinygpt.hub push "
                  f"{args.out} {args.push_to_hub}", file=sys.stderr)  # fmt: skip
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

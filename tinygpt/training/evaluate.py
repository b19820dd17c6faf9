"""Exact validation loss: `python -m tinygpt.evaluate [--model DIR] [--data PATH]` prints one JSON line.

Protocol: the validation split (last 10% of the corpus) is cut into consecutive, non-overlapping
windows of the model's block size; every character after the first is predicted from the characters
before it in its window. The figure is the mean cross-entropy in nats over all those characters,
in float32, with no randomness, so it is the same on every run and every machine (to rounding).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from tinygpt.files.checkpoint import WEIGHTS_DIR, load_model
from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.files.quantize import quantize_int8
from tinygpt.model.gpt import GPT, KVCache
from tinygpt.model.tokenizer import CharTokenizer, UnknownCharactersError
from tinygpt.training.data import load_splits


@torch.no_grad()
def validation_loss(
    model: GPT, ids: torch.Tensor, batch_size: int = 32, cache_dtype: torch.dtype | None = None
) -> dict:
    """Mean next-character cross-entropy over `ids` (1-D), window by window; see module docstring.
    With `cache_dtype`, each window passes through a KV cache of that dtype, so attention sees keys and
    values rounded as a backend that keeps such a cache stores them (int8: the C++ step)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    T = model.config.block_size
    n_targets = len(ids) - 1
    total = 0.0

    def add(starts: list[int], length: int) -> None:
        nonlocal total
        x = torch.stack([ids[s : s + length] for s in starts]).to(device)
        y = torch.stack([ids[s + 1 : s + 1 + length] for s in starts]).to(device)
        if cache_dtype is None:
            logits, _ = model(x)
        else:
            cache = KVCache.empty(model.config, len(starts), cache_dtype, device)
            logits, _ = model(x, cache=cache, input_pos=torch.zeros(len(starts), dtype=torch.long))
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()

    full_windows = n_targets // T
    for first in range(0, full_windows, batch_size):
        add([w * T for w in range(first, min(first + batch_size, full_windows))], T)
    if n_targets % T:  # the shorter last window
        add([full_windows * T], n_targets % T)
    model.train(was_training)
    loss = total / n_targets
    return {"val_loss": round(loss, 5), "bpc": round(loss / math.log(2), 5), "chars": n_targets, "block_size": T}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", "--weights", dest="weights", default=str(WEIGHTS_DIR),
                        help="weights folder, or USER/NAME of a Hugging Face Hub repo")  # fmt: skip
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="UTF-8 corpus; its last 10%% is the validation split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=("float32", "int8"), default="float32",
                        help="score the model as the demo runs it (int8) or as trained (float32)")  # fmt: skip
    parser.add_argument("--cache-dtype", choices=("float32", "float16", "int8"), default=None,
                        help="run each window through a KV cache of this dtype (int8: as the C++ step, "
                        "the page's backend, keeps it); default: no cache")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        model = load_model(args.weights)
        if args.precision == "int8":
            model = quantize_int8(model)
        _, _, val_ids = load_splits(args.data, CharTokenizer(model.config.vocab))
    except (FileNotFoundError, UnknownCharactersError, ValueError) as err:  # ValueError includes WeightsError
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    cache_dtype = getattr(torch, args.cache_dtype) if args.cache_dtype else None
    result = validation_loss(model, val_ids, args.batch_size, cache_dtype)
    result.update(params=model.num_params(), precision=args.precision, cache_dtype=args.cache_dtype,
                  seconds=round(time.perf_counter() - started, 2))  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generation speed: the KV-cached stream against the seed's recompute-the-window loop, same process.

    python benchmarks/generate_speed.py --tokens 500

Prints one JSON line with characters per second for each, greedy, batch 1, and checks both
produce the same text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinygpt.checkpoint import WEIGHTS_DIR, load_model
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer


@torch.inference_mode()
def recompute_every_window(model: GPT, idx: torch.Tensor, n: int) -> list[int]:
    """Baseline: the seed's generate, a full forward pass over the cropped context per character."""
    out = []
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size :])
        token = logits[:, -1].argmax(-1, keepdim=True)
        out.append(token.item())
        idx = torch.cat([idx, token], dim=1)
    return out


def timed(fn) -> tuple[float, list[int]]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--weights", default=str(WEIGHTS_DIR))
    parser.add_argument("--prompt", default="ROMEO:\n")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.weights)
    idx = torch.tensor([CharTokenizer(model.config.vocab).encode(args.prompt)])
    list(model.stream(idx, 20, temperature=0))  # warm up
    cached_s, cached = timed(lambda: [t.item() for t in model.stream(idx, args.tokens, temperature=0)])
    baseline_s, baseline = timed(lambda: recompute_every_window(model, idx, args.tokens))
    print(json.dumps({
        "tokens": args.tokens,
        "kv_cache_chars_per_s": round(args.tokens / cached_s, 1),
        "recompute_chars_per_s": round(args.tokens / baseline_s, 1),
        "speedup": round(baseline_s / cached_s, 2),
        "same_text": cached == baseline,
        "block_size": model.config.block_size,
        "threads": torch.get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

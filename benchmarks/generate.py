"""Generation speed, side by side in one process: the seed's generate, ours, and Hugging Face transformers.

    pip install -r requirements-bench.txt
    python benchmarks/generate.py            # shipped weights, batch 1, 2 threads

Batch 1, a 100-character prompt and 1000 new characters (so generation runs past the 256-character
window), temperature 0.8, 2 CPU threads:
  (a) naive         the seed's generate: the whole cropped context through the model per character
  (b) ours          tinygpt.generate.stream: prefill + KV-cached decode, at each inference precision
                    and with the C++ decode step ("fused", tinygpt.fused), and stream_speculative:
                    drafts from the training split's n-grams, several checked per forward pass
  (c) transformers  GPT2LMHeadModel.generate(use_cache=True) with the same dimensions and ReLU, our
                    weights copied in where they map. GPT-2 cannot run past its position table, so its
                    table is extended to 1100 positions (the extra rows are random: speed only).
Also: time to the first character after a 200-character prompt, and the achieved GFLOP/s.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinygpt.checkpoint import WEIGHTS_DIR, load_model
from tinygpt.data import DEFAULT_DATA, load_text
from tinygpt.draft import NGramDraft
from tinygpt.fused import extension
from tinygpt.generate import PRECISIONS, for_inference, stream, stream_speculative
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer


def flops_per_char(model: GPT, context: float) -> float:
    """Multiply-adds x 2 for one new position: every weight matrix once, plus attention over `context` keys."""
    c = model.config
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embedding" not in n)
    return 2 * matrices + 2 * 2 * c.n_layer * c.n_embd * context


def count_passes(model: GPT) -> list[int]:
    """A counter of the model's forward passes from now on (prefills included)."""
    passes = [0]
    model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    return passes


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def transformers_twin(model: GPT, n_positions: int):
    """A GPT2LMHeadModel of the same shape (ReLU), with our weights where they map."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=n_positions, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    twin = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        twin.transformer.wte.weight.copy_(model.token_embedding.weight)
        twin.transformer.wpe.weight[: c.block_size].copy_(model.position_embedding.weight)
        for ours, theirs in zip(model.blocks, twin.transformer.h, strict=True):
            # GPT-2's Conv1D stores weights as (in, out): the transpose of nn.Linear's.
            theirs.ln_1.load_state_dict(ours.ln1.state_dict())
            theirs.attn.c_attn.weight.copy_(ours.attn.qkv.weight.T)
            theirs.attn.c_attn.bias.zero_()
            theirs.attn.c_proj.weight.copy_(ours.attn.proj.weight.T)
            theirs.attn.c_proj.bias.copy_(ours.attn.proj.bias)
            theirs.ln_2.load_state_dict(ours.ln2.state_dict())
            theirs.mlp.c_fc.weight.copy_(ours.ffwd.net[0].weight.T)
            theirs.mlp.c_fc.bias.copy_(ours.ffwd.net[0].bias)
            theirs.mlp.c_proj.weight.copy_(ours.ffwd.net[2].weight.T)
            theirs.mlp.c_proj.bias.copy_(ours.ffwd.net[2].bias)
        twin.transformer.ln_f.load_state_dict(model.ln_f.state_dict())
        twin.lm_head.weight.copy_(model.lm_head.weight)
    return twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(WEIGHTS_DIR))
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-naive", action="store_true", help="leave out (a), the slow one")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's table for 200 int8 steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict = {"threads": args.threads, "new_chars": args.tokens, "prompt_chars": 100}

    model = load_model(args.weights)
    tokenizer = CharTokenizer(model.config.vocab)
    text = load_text(DEFAULT_DATA)
    prompt = torch.tensor([tokenizer.encode(text[-1000:-900])])  # from the validation split
    long_prompt = torch.tensor([tokenizer.encode(text[-600:-400])])
    sampling = dict(temperature=0.8, generator=torch.Generator().manual_seed(0))
    n = args.tokens
    # Past the window the context holds 128-256 characters in "fast" mode; 256 for the others.
    mean_context = {"fast": 0.75 * model.config.block_size, "full": model.config.block_size}

    if not args.skip_naive:
        naive_s = seconds(lambda: model.generate(prompt, n, **sampling))
        results["naive_chars_per_s"] = round(n / naive_s, 1)

    started = time.perf_counter()
    draft = NGramDraft.from_corpus(DEFAULT_DATA, tokenizer)
    results["draft_build_s"] = round(time.perf_counter() - started, 2)
    variants = {}
    kinds = [(precision, False) for precision in PRECISIONS]
    if extension() is not None:  # the C++ decode step (tinygpt.fused), float32
        kinds.append(("float32", True))
    for precision, fused in kinds:
        name = "fused" if fused else precision
        variants[name] = (precision, fused, stream)
        variants[f"{name}+speculative"] = (precision, fused, partial(stream_speculative, draft=draft))
    for name, (precision, fused, decode) in variants.items():
        fast = for_inference(load_model(args.weights), precision, fused)
        for _ in decode(fast, prompt, 20, **sampling):  # warm up
            pass
        passes = count_passes(fast)
        ours_s = seconds(lambda fast=fast, decode=decode: [*decode(fast, prompt, n, **sampling)])
        n_passes = passes[0]
        first_ms = []
        for _ in range(5):
            first = partial(decode, fast, long_prompt, 1, **sampling)
            first_ms.append(1000 * seconds(lambda first=first: next(first())))
        results[name] = {
            "chars_per_s": round(n / ours_s, 1),
            "chars_per_pass": round(n / n_passes, 2),
            "first_char_ms": round(sorted(first_ms)[2], 1),  # median of 5
            # Useful arithmetic only: a rejected draft's position is work, but not counted here.
            "gflops_per_s": round(n / ours_s * flops_per_char(model, mean_context["fast"]) / 1e9, 2),
        }

    try:
        twin = transformers_twin(model, n_positions=prompt.size(1) + n)
    except ImportError:
        twin = None
        print("transformers is not installed (pip install -r requirements-bench.txt): skipping (c)", file=sys.stderr)
    if twin is not None:
        with torch.inference_mode():
            options = dict(max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=0.8, top_k=0,
                           use_cache=True, pad_token_id=0)  # fmt: skip
            twin.generate(prompt, **{**options, "max_new_tokens": 20, "min_new_tokens": 20})  # warm up
            twin_s = seconds(lambda: twin.generate(prompt, **options))
        results["transformers_chars_per_s"] = round(n / twin_s, 1)

    if args.profile:
        from torch.profiler import profile

        fast = for_inference(load_model(args.weights), "int8")
        with profile() as prof:
            for _ in stream(fast, prompt, 200, **sampling):
                pass
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)

    # The headline is what the page runs by default: the C++ step where it builds, else PyTorch
    # float32 with speculation (app.py's defaults).
    page = "fused" if "fused" in variants else "float32+speculative"
    summary = {
        "chars_per_s": results[page]["chars_per_s"],
        "decoding": page,
        "first_char_ms": results[page]["first_char_ms"],
        "gflops_per_s": results[page]["gflops_per_s"],
    }
    if "naive_chars_per_s" in results:
        summary["speedup_vs_naive"] = round(summary["chars_per_s"] / results["naive_chars_per_s"], 1)
    if "transformers_chars_per_s" in results:
        summary["speedup_vs_transformers"] = round(summary["chars_per_s"] / results["transformers_chars_per_s"], 2)
    print(json.dumps({**summary, **results}))


if __name__ == "__main__":
    main()

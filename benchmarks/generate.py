"""Generation speed, side by side in one process: the seed's generate, ours, and Hugging Face transformers.

    pip install -r requirements-bench.txt
    python benchmarks/generate.py            # shipped weights, 2 threads
    OMP_WAIT_POLICY=PASSIVE python benchmarks/generate.py --threads 1 --step-threads 2   # as the page runs

Single stream: a 100-character prompt and 1000 new characters (so generation runs past the
256-character window), temperature 0.8:
  (a) naive         the seed's generate: the whole cropped context through the model per character
  (b) ours          the decode loop (tinygpt.generate) alone, on each backend (tinygpt.backends);
                    and the page's path: one request through the batching engine (tinygpt.engine)
                    on the default backend, which should cost the same as the loop alone
  (c) transformers  GPT2LMHeadModel.generate(use_cache=True) with the same dimensions and ReLU, our
                    weights copied in where they map. GPT-2 cannot run past its position table, so its
                    table is extended to 1100 positions (the extra rows are random: speed only).
Also: time to the first character after a 200-character prompt; batches on the default backend: B
sequences of 200 new characters decoded together (aggregate characters/s); and the ceiling, the
machine's float32 matmul GFLOP/s over the ~2 x parameters FLOPs a character costs. Progress goes to
stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinygpt.files.checkpoint import WEIGHTS_DIR, load_model
from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.model.gpt import GPT
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving.backends import extension, load_backend
from tinygpt.serving.engine import DEFAULT_MAX_BATCH, Engine
from tinygpt.serving.generate import Sequence, decode
from tinygpt.training.data import load_text

ENGINE_ROUNDS = 9  # pairs of runs, one request alone and one through the engine
PAGE_STREAM_INTERVAL_S = 0.05  # app.py's STREAM_INTERVAL_S: how often the page takes the new characters


def flops_per_char(model: GPT, context: float) -> float:
    """Multiply-adds x 2 for one new position: every weight matrix once, plus attention over `context` keys."""
    c = model.config
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embedding" not in n)
    return 2 * matrices + 2 * 2 * c.n_layer * c.n_embd * context


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """The machine's float32 matmul speed: the best of `repeats` (size x size) @ (size x size)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sequences(prompt: list[int], n: int, count: int = 1) -> list[Sequence]:
    return [Sequence(list(prompt), n, 0.8, generator=torch.Generator().manual_seed(i)) for i in range(count)]


def run_alone(backend, prompt: list[int], n: int, count: int = 1) -> None:
    for _ in decode(backend, sequences(prompt, n, count)):
        pass


def run_engine(engine: Engine, prompt: list[int], n: int) -> None:
    """One generation through the engine, read as the page reads it: on an event loop."""

    async def read() -> None:
        async for _ in engine.generate(sequences(prompt, n)[0], PAGE_STREAM_INTERVAL_S):
            pass

    asyncio.run(read())


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
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 16, 32, 64],
                        help="batch sizes to time on the default backend")  # fmt: skip
    parser.add_argument("--step-threads", type=int, default=1, help="threads of the default backend's C++ step "
                        "for 8+ sequences; the page uses one per CPU and runs with OMP_WAIT_POLICY=PASSIVE: "
                        "set both to measure its path")  # fmt: skip
    parser.add_argument("--skip-naive", action="store_true", help="leave out (a), the slow one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    results: dict = {"threads": args.threads, "step_threads": args.step_threads,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
                     "new_chars": args.tokens, "prompt_chars": 100}  # fmt: skip

    model = load_model(args.weights)
    tokenizer = CharTokenizer(model.config.vocab)
    text = load_text(DEFAULT_DATA)
    prompt = tokenizer.encode(text[-1000:-900])  # from the validation split
    long_prompt = tokenizer.encode(text[-600:-400])
    n = args.tokens
    # Past the window the context holds 128-256 characters; 192 on average.
    per_char = flops_per_char(model, 0.75 * model.config.block_size)
    results["gflop_per_char"] = round(per_char / 1e9, 5)
    results["matmul_gflops_per_s"] = round(matmul_gflops(), 1)
    results["ceiling_chars_per_s"] = round(results["matmul_gflops_per_s"] * 1e9 / per_char)

    if not args.skip_naive:
        print("(a) the seed's generate ...", file=sys.stderr)
        idx = torch.tensor([prompt])
        naive_s = seconds(lambda: model.generate(idx, n, 0.8, generator=torch.Generator().manual_seed(0)))
        results["naive_chars_per_s"] = round(n / naive_s, 1)

    names = ["torch", "int8"] + (["cpp"] if extension() is not None else [])
    page = load_backend(load_model(args.weights), "auto", args.step_threads)
    for name in names:
        print(f"(b) {name} ...", file=sys.stderr)
        backend = load_backend(load_model(args.weights), name)
        run_alone(backend, prompt, 20)  # warm up
        alone_s = seconds(lambda backend=backend: run_alone(backend, prompt, n))
        first_ms = sorted(1000 * seconds(lambda backend=backend: run_alone(backend, long_prompt, 1)) for _ in range(5))
        results[name] = {
            "chars_per_s": round(n / alone_s, 1),
            "first_char_ms": round(first_ms[2], 1),  # median of 5
            "gflops_per_s": round(n / alone_s * per_char / 1e9, 2),
        }
    batched = {}
    for size in args.batches:
        print(f"batch of {size} on {page.name} ...", file=sys.stderr)
        batch_s = seconds(lambda size=size: run_alone(page, prompt, 200, size))
        batched[str(size)] = round(size * 200 / batch_s, 1)
    results[page.name]["batched_chars_per_s"] = batched
    results[page.name]["batched_gflops_per_s"] = {k: round(v * per_char / 1e9, 2) for k, v in batched.items()}

    # The page's path: the engine's thread, one request at a time, on the default backend.
    # As in the page (app.py), what is alive by now is frozen out of the garbage collector's sight:
    # the naive run above leaves enough behind that collections slowed the engine's thread ~5%.
    gc.collect()
    gc.freeze()
    print("the engine ...", file=sys.stderr)
    engine = Engine(page, DEFAULT_MAX_BATCH)
    run_engine(engine, prompt, 20)  # warm up
    alone_s, engine_s = [], []
    for _ in range(ENGINE_ROUNDS):  # interleaved: each pair of runs shares the machine's minute
        alone_s.append(seconds(lambda: run_alone(page, prompt, n)))
        engine_s.append(seconds(lambda: run_engine(engine, prompt, n)))
    results["engine"] = {
        "backend": page.name,
        "chars_per_s": round(n / min(engine_s), 1),
        "unbatched_chars_per_s": round(n / min(alone_s), 1),
        # The median of the pairs' ratios: runs a second apart differ by up to ~10% on these machines,
        # and the two best runs, taken at different moments, carry that into their ratio.
        "ratio_to_unbatched": round(statistics.median(a / e for a, e in zip(alone_s, engine_s, strict=True)), 3),
        "ratio_of_best_runs": round(min(alone_s) / min(engine_s), 3),
    }

    try:
        twin = transformers_twin(model, n_positions=len(prompt) + n)
    except ImportError:
        twin = None
        print("transformers is not installed (pip install -r requirements-bench.txt): skipping (c)", file=sys.stderr)
    if twin is not None:
        idx = torch.tensor([prompt])
        options = dict(max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=0.8, top_k=0, use_cache=True,
                       pad_token_id=0)  # fmt: skip
        twin.generate(idx, **{**options, "max_new_tokens": 20, "min_new_tokens": 20})  # warm up
        results["transformers_chars_per_s"] = round(n / seconds(lambda: twin.generate(idx, **options)), 1)

    # The headline is what the page runs for one person: the default backend, through the engine.
    summary = {"chars_per_s": results["engine"]["chars_per_s"], "backend": page.name,
               "first_char_ms": results[page.name]["first_char_ms"]}  # fmt: skip
    if "naive_chars_per_s" in results:
        summary["speedup_vs_naive"] = round(summary["chars_per_s"] / results["naive_chars_per_s"], 1)
    if "transformers_chars_per_s" in results:
        summary["speedup_vs_transformers"] = round(summary["chars_per_s"] / results["transformers_chars_per_s"], 2)
    print(json.dumps({**summary, **results}))


if __name__ == "__main__":
    main()

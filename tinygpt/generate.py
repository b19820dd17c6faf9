"""Autocomplete text: `python -m tinygpt.generate "PROMPT" -n 200 --temperature 0.8 --seed 1`.

How it is fast (in the style of gpt-fast's generate.py):
  prefill  - one forward pass over the prompt fills every layer's KV cache;
  decode   - each new character is then one position through the model, attending to the cache;
  speculate - (`stream_speculative`, one sample) a pass checks the last character and a few drafted
             after it (`tinygpt.draft`), so a pass yields ~2 characters, drawn exactly as decode would;
  fused    - (`for_inference(..., fused=True)`, one sample) each decode step is one C++ call
             (`tinygpt.fused`) instead of ~150 PyTorch operations: ~7x faster on 2 CPU cores.

Past the context window. Positions are learned and absolute, so once the text outgrows block_size
every cached key is at the wrong position. Two behaviours:
  "exact" - the seed's semantics: the model always sees the last block_size characters, so every
            step past the window recomputes the whole window (correct, slow);
  "fast"  - the default: when the cache is full, re-prefill the most recent block_size/2 characters
            at positions 0.. and continue decoding from there. The model then sees between
            block_size/2 and block_size characters, never fewer, at one prefill per block_size/2
            characters. (Validation loss is flat beyond ~64 characters of context; see the README.)

`complete` is what the app, the API and the command line share: it checks and cleans the input, then
streams the new characters and the probabilities the model gave them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinygpt.checkpoint import WEIGHTS_DIR, WeightsError, load_model
from tinygpt.data import DEFAULT_DATA
from tinygpt.draft import NGramDraft
from tinygpt.fused import FusedGPT, extension
from tinygpt.model import GPT
from tinygpt.sampling import sample_next, sampling_probs
from tinygpt.tokenizer import CharTokenizer, UnknownCharactersError

MAX_NEW_TOKENS = 2000
MAX_TEMPERATURE = 2.0
MAX_NUM_SAMPLES = 16
MAX_SEED = 2**31 - 1
MAX_PROMPT_CHARS = 10_000  # only the last block_size characters condition the model anyway
EMPTY_PROMPT_CONTEXT = "\n"  # an empty prompt starts the model at the beginning of a line
WINDOWS = ("fast", "exact")
PRECISIONS = ("float32", "int8")
LOOKAHEAD = 4  # drafted characters checked per forward pass


class InputError(ValueError):
    """Input a person can fix; the message says how."""


# --- Decoding ------------------------------------------------------------------------------------


class Step(NamedTuple):
    tokens: torch.Tensor  # (B,) the sampled token of each sequence
    probs: torch.Tensor  # (B, V) the model's distribution they were drawn from, at temperature 1


def prefill(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Run idx (B, T) at positions 0..T-1, filling the KV caches; returns the last logits (B, V)."""
    model.setup_cache(idx.size(0))
    return model(idx, input_pos=0)[0][:, -1]


def decode_one(model: GPT, token: torch.Tensor, pos: int) -> torch.Tensor:
    """Run one token (B, 1) at position `pos`, attending to the cache; returns its logits (B, V)."""
    return model(token, input_pos=pos)[0][:, -1]


@torch.inference_mode()
def stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    window: str = "fast",
) -> Iterator[Step]:
    """Yield max_new_tokens Steps continuing idx (B, T); B sequences are sampled side by side."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, not {window!r}")
    block_size = model.config.block_size
    keep = block_size // 2 if window == "fast" else block_size
    context = idx[:, -block_size:]
    logits = prefill(model, context)
    for i in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        yield Step(token[:, 0], F.softmax(logits.float(), dim=-1))
        if i == max_new_tokens - 1:
            break
        context = torch.cat([context, token], dim=1)
        if context.size(1) <= block_size:
            logits = decode_one(model, token, context.size(1) - 1)
        else:  # the cache is full: start again from the most recent `keep` tokens
            context = context[:, -keep:]
            logits = prefill(model, context)


def without(probs: torch.Tensor, rejected: int) -> torch.Tensor:
    """probs (V,) with a rejected draft's probability removed, renormalised. Drawing from it after
    rejecting d (which happens with probability 1 - p(d)) gives each x != d probability p(x) overall."""
    probs = probs.clone()
    probs[rejected] = 0
    return probs / probs.sum()


@torch.inference_mode()
def stream_speculative(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    draft: NGramDraft,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    lookahead: int = LOOKAHEAD,
) -> Iterator[Step]:
    """`stream` with window="fast" for one sequence (B = 1), several characters per forward pass.

    Speculative decoding: each pass feeds the last sampled character and up to `lookahead` drafted
    ones, which yields the model's distribution after each. Left to right, a drafted character d is
    kept with probability p(d); otherwise the next character is drawn from p without d (renormalised)
    and the pass ends; if all are kept, one more is drawn from the last distribution. Each character
    is so drawn from exactly the distribution `stream` draws it from (p(d) for d, and (1 - p(d)) x
    p(x) / (1 - p(d)) for any other x), whatever the draft; a good draft only means fewer passes.
    """
    if idx.size(0) != 1:
        raise ValueError(f"speculative decoding runs one sequence at a time, not {idx.size(0)}")
    block_size = model.config.block_size
    keep = block_size // 2
    tokens = idx[0, -block_size:].tolist()
    logits = prefill(model, idx[:, -block_size:])
    token = sample_next(logits, temperature, top_k, top_p, generator)
    yield Step(token[0], F.softmax(logits.float(), dim=-1))
    tokens.append(token.item())
    cached = len(tokens) - 1  # positions in the KV cache; the last token is fed with the next pass
    produced = 1
    while produced < max_new_tokens:
        if cached == block_size:  # no room for the last token: re-prefill the most recent `keep`
            tokens = tokens[-keep:]
            prefill(model, torch.tensor([tokens[:-1]]))
            cached = keep - 1
        drafted = draft.propose(tokens, min(lookahead, block_size - cached - 1, max_new_tokens - produced - 1))
        logits = model(torch.tensor([tokens[-1:] + drafted]), input_pos=cached)[0][0]
        probs = sampling_probs(logits, temperature, top_k, top_p)
        shown = F.softmax(logits.float(), dim=-1)
        keep_draws = torch.rand(len(drafted), generator=generator, dtype=torch.float64).tolist()
        p_drafted = probs[torch.arange(len(drafted)), drafted].tolist()
        kept = 0
        while kept < len(drafted) and keep_draws[kept] < p_drafted[kept]:
            yield Step(torch.tensor(drafted[kept : kept + 1]), shown[kept : kept + 1])
            kept += 1
        new = probs[kept] if kept == len(drafted) else without(probs[kept], drafted[kept])
        token = torch.multinomial(new, 1, generator=generator)  # greedy: `new` is one-hot, so this is argmax
        yield Step(token, shown[kept : kept + 1])
        tokens += [*drafted[:kept], token.item()]
        cached += 1 + kept
        produced += kept + 1


# --- Inference precision -------------------------------------------------------------------------
# Decoding one character reads every weight once, so at batch 1 it is bound by memory bandwidth,
# not arithmetic: fewer bytes per weight is the speed-up.


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights and one scale per output row (weight-only quantisation).

    The matmul runs on bfloat16 activations (PyTorch's int8 weight kernel is fast only for those);
    input and output stay float32, like the rest of the model.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
        # Still parameters (frozen), so num_params() counts the same model.
        self.weight = nn.Parameter((weight / scales[:, None]).round().to(torch.int8), requires_grad=False)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.size(-1)).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales).float().view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def for_inference(model: GPT, precision: str = "float32", fused: bool = False) -> GPT:
    """The model in eval mode, as is (float32) or with int8 linear weights (CPU only). In place.

    With `fused` (float32 on the CPU), one sequence's cached steps run as one C++ call each
    (`tinygpt.fused`), where that can be built; otherwise the model stays on PyTorch.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    model.eval()
    if precision == "int8":
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    setattr(module, name, Int8Linear(child))
    elif fused and model.token_embedding.weight.device.type == "cpu" and extension() is not None:
        return FusedGPT(model)
    return model


def speculates(model: GPT, requested: bool | None = None) -> bool:
    """Whether the app and the command line decode speculatively: as requested, else everywhere but on
    the C++ step, where a 5-position pass costs ~2x a 1-position one and speculation gains ~1%."""
    return requested if requested is not None else not isinstance(model, FusedGPT)


# --- Text in, text out ---------------------------------------------------------------------------


def check_settings(
    max_new_tokens: object,
    temperature: object,
    top_k: object = None,
    top_p: object = None,
    num_samples: object = 1,
) -> tuple[int, float, int | None, float | None, int]:
    """Validate the sampling settings; return them typed. None (or 0 for top_k) turns a filter off."""
    max_new_tokens = _whole_number("the number of characters", max_new_tokens, 1, MAX_NEW_TOKENS)
    temperature = _number("temperature", temperature, 0, MAX_TEMPERATURE, "0 (greedy)")
    top_k = None if top_k is None else _whole_number("top-k", top_k, 0, None) or None
    top_p = None if top_p is None else _number("top-p", top_p, 0, 1, "0")
    if top_p == 0:
        raise InputError("top-p must be above 0 (1 keeps every character), not 0")
    num_samples = _whole_number("the number of samples", num_samples, 1, MAX_NUM_SAMPLES)
    return max_new_tokens, temperature, top_k, top_p, num_samples


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: far out of any range here
        return False


def _number(name: str, value: object, low: float, high: float, low_text: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, not {value!r}")
    if not (_finite(value) and low <= value <= high):
        raise InputError(f"{name} must be between {low_text} and {high}, not {value}")
    return float(value)


def _whole_number(name: str, value: object, low: int, high: int | None) -> int:
    allowed = f"from {low} to {high}" if high is not None else f"{low} or more"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a whole number {allowed}, not {value!r}")
    if not _finite(value) or value != int(value) or value < low or (high is not None and value > high):
        raise InputError(f"{name} must be a whole number {allowed}, not {value}")
    return int(value)


def clean_prompt(tokenizer: CharTokenizer, prompt: object) -> str:
    """The prompt mapped into the model's alphabet (see CharTokenizer.normalize), or InputError."""
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text, not {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,}")
    try:
        return tokenizer.normalize(prompt)
    except UnknownCharactersError as err:
        raise InputError(str(err)) from None


class TextStep(NamedTuple):
    chars: list[str]  # the new character of each sample
    probs: torch.Tensor  # (num_samples, V) the model's distribution for this character, at temperature 1


def complete(
    model: GPT,
    tokenizer: CharTokenizer,
    prompt: object,
    max_new_tokens: object,
    temperature: object = 0.8,
    seed: object = None,
    top_k: object = None,
    top_p: object = None,
    num_samples: object = 1,
    window: str = "fast",
    draft: NGramDraft | None = None,
) -> tuple[str, Iterator[TextStep]]:
    """Check the input, then return the cleaned prompt and a stream of the new characters.

    Each sample is the prompt followed by exactly max_new_tokens characters. A prompt longer than the
    context is returned whole; the model conditions on its last block_size characters. With a `draft`,
    a single sample in the fast window is decoded speculatively (same distribution, fewer passes). Raises
    InputError, before any generation, for input that cannot be used.
    """
    text = clean_prompt(tokenizer, prompt)
    max_new_tokens, temperature, top_k, top_p, num_samples = check_settings(
        max_new_tokens, temperature, top_k, top_p, num_samples
    )
    seed = None if seed is None else _whole_number("the seed", seed, 0, MAX_SEED)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    idx = torch.tensor([tokenizer.encode(text or EMPTY_PROMPT_CONTEXT)]).repeat(num_samples, 1)
    if draft is not None and num_samples == 1 and window == "fast":
        steps = stream_speculative(model, idx, max_new_tokens, draft, temperature, top_k, top_p, generator)
    else:
        steps = stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator, window)
    return text, (TextStep([tokenizer.vocab[t] for t in step.tokens.tolist()], step.probs) for step in steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Autocomplete a prompt with the trained model.")
    parser.add_argument("prompt", nargs="?", default="", help="text to continue (empty: start a new line)")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=200, help=f"characters to add (1-{MAX_NEW_TOKENS})")
    parser.add_argument("-t", "--temperature", type=float, default=0.8, help="0 is greedy; higher is more random")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k likeliest characters")
    parser.add_argument("--top-p", type=float, default=None, help="sample only from the likeliest characters whose "
                        "probabilities add up to p (nucleus sampling)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling for repeatable output")
    parser.add_argument("--num-samples", type=int, default=1, help="independent continuations, sampled as a batch")
    parser.add_argument("--window", choices=WINDOWS, default="fast", help="past the context window (see module doc)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="inference precision")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="float32: one C++ call per decoding step (tinygpt.fused; built on first use)")  # fmt: skip
    parser.add_argument("--speculative", action=argparse.BooleanOptionalAction, default=None,
                        help="check several drafted characters per pass (one sample, fast window; "
                        "default: on without --fused, where it gains little)")  # fmt: skip
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="corpus whose training split drafts characters")
    parser.add_argument("--model", "--weights", dest="weights", default=str(WEIGHTS_DIR),
                        help="weights folder, or USER/NAME of a Hugging Face Hub repo")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        model = for_inference(load_model(args.weights), args.precision, args.fused)
        tokenizer = CharTokenizer(model.config.vocab)
        draft = NGramDraft.from_corpus(args.data, tokenizer) if speculates(model, args.speculative) else None
        prompt, steps = complete(
            model, tokenizer, args.prompt, args.max_new_tokens, args.temperature,
            args.seed, args.top_k, args.top_p, args.num_samples, args.window, draft,
        )  # fmt: skip
        if args.num_samples == 1:  # print as it goes
            sys.stdout.write(prompt)
            for step in steps:
                sys.stdout.write(step.chars[0])
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            texts = [prompt] * args.num_samples
            for step in steps:
                texts = [text + char for text, char in zip(texts, step.chars, strict=True)]
            sys.stdout.write("\n".join(f"--- sample {i + 1}\n{text}" for i, text in enumerate(texts)) + "\n")
    except (InputError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

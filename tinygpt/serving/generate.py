"""Autocomplete text: `python -m tinygpt.generate "PROMPT" -n 200 --temperature 0.8 --seed 1`.

The one decode loop, in the style of gpt-fast's generate.py, for one sequence or many at once:
  prefill - one forward pass over a sequence's prompt fills its row of the KV cache;
  step    - every sequence samples its next character (each with its own temperature, top-k, top-p
            and random generator), then one batched forward pass runs all of them one position
            further, each at its own position in its own cache row.
Sequences can join (`Decoder.add`) and leave (`Decoder.remove`) between steps: the page's batching
engine (`tinygpt.serving.engine`) does that; the command line runs one request's samples to the end.
How a forward pass runs is the backend's business (`tinygpt.serving.backends`: PyTorch float32 or int8,
or the C++ step); the loop is the same for all of them.

Past the context window. Positions are learned and absolute, so once a text outgrows block_size
every cached key is at the wrong position. When a sequence's cache row is full, the loop re-prefills
its most recent block_size/2 characters at positions 0.. and carries on from there: the model sees
between block_size/2 and block_size characters, never fewer, at one prefill per block_size/2
characters (the validation loss is flat beyond ~64 characters of context; see the README). The
seed's `GPT.generate`, which recomputes the last block_size characters for every new one, is the
reference the tests compare with.

`start` checks and cleans a request (InputError says what to fix); `complete` runs it here.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from tinygpt.files.checkpoint import WEIGHTS_DIR, load_model
from tinygpt.model.gpt import GPT, KVCache, choose
from tinygpt.model.tokenizer import CharTokenizer, UnknownCharactersError
from tinygpt.serving.backends import BACKENDS, Backend, TorchBackend, load_backend

MAX_NEW_TOKENS = 2000
MAX_TEMPERATURE = 2.0
MAX_NUM_SAMPLES = 16
MAX_SEED = 2**31 - 1
MAX_PROMPT_CHARS = 10_000  # only the last block_size characters condition the model anyway
EMPTY_PROMPT_CONTEXT = "\n"  # an empty prompt starts the model at the beginning of a line
UNIFORM_BLOCK = 64  # random numbers a sequence draws from its generator at once


class InputError(ValueError):
    """Input a person can fix; the message says how."""


# --- The decode loop -----------------------------------------------------------------------------


@dataclass(eq=False)
class Sequence:
    """One text being generated: its context and how to sample it."""

    tokens: list[int]  # the context: the prompt and what has been generated (at most block_size + 1)
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None
    produced: int = 0
    cached: int = 0  # positions of this sequence in its cache row
    uniforms: list[float] = field(default_factory=list, init=False, repr=False)  # drawn, not yet used (reversed)

    @property
    def done(self) -> bool:
        return self.produced >= self.max_new_tokens

    def next_uniform(self) -> float:
        """The generator's next float64 uniform. They are drawn UNIFORM_BLOCK at a time, which gives
        the same numbers as one at a time, so that a step makes one PyTorch call for the whole batch
        rather than one per sequence."""
        if not self.uniforms:
            block = torch.rand(UNIFORM_BLOCK, dtype=torch.float64, generator=self.generator)
            self.uniforms = block.tolist()[::-1]
        return self.uniforms.pop()


class Token(NamedTuple):
    sequence: Sequence
    token: int
    step_logits: torch.Tensor  # (B, V) the logits of the step it was drawn in, one row per sequence
    row: int  # its sequence's row there

    @property
    def logits(self) -> torch.Tensor:
        """(V,) the model's logits it was drawn from (their softmax: its distribution at temperature 1).
        A view made when asked for: most readers never ask, and a step has a token per sequence."""
        return self.step_logits[self.row]


def sample_rows(
    logits: torch.Tensor, settings: list[tuple[float, int | None, float | None]], uniforms: list[float]
) -> list[int]:
    """One token for each row of logits (B, C), row i with its own (temperature, top_k, top_p) and
    uniform (unused when greedy): the token `sample_next` draws for that row alone, given that
    uniform. Rows that share settings share the arithmetic, a few operations for the whole batch."""
    if settings.count(settings[0]) == len(settings):  # one group: the usual crowd, and one person alone
        return choose(logits, *settings[0], torch.tensor(uniforms, dtype=torch.float64)).tolist()
    tokens = [0] * len(settings)
    groups: dict[tuple[float, int | None, float | None], list[int]] = {}
    for row, setting in enumerate(settings):
        groups.setdefault(setting, []).append(row)
    for (temperature, top_k, top_p), rows in groups.items():
        u = torch.tensor([uniforms[row] for row in rows], dtype=torch.float64)
        for row, token in zip(rows, choose(logits[rows], temperature, top_k, top_p, u).tolist(), strict=True):
            tokens[row] = token
    return tokens


class Decoder:
    """Up to `max_batch` sequences decoded side by side; sequence i lives in row i of the KV cache.

    The backend can be replaced between steps (`use`; the cache is the decoder's, not the backend's).
    """

    def __init__(self, backend: Backend, max_batch: int = 1) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.backend = backend
        self.config = backend.model.config
        self.max_batch = max_batch
        self.cache = KVCache.empty(self.config, max_batch, backend.cache_dtype)
        self.sequences: list[Sequence] = []
        # (len(sequences), V): row i, sequence i's logits for its next token. A new tensor whenever
        # it changes, never written in place: the tokens of the last step are views of it.
        self.logits = torch.empty(0, self.config.vocab_size)

    def use(self, backend: Backend) -> None:
        """Run the next passes with `backend`; the sequences in progress carry on, their cache in its dtype."""
        if backend.cache_dtype != self.cache.k.dtype:
            self.cache = self.cache.to(backend.cache_dtype)
        self.backend = backend

    @property
    def full(self) -> bool:
        return len(self.sequences) == self.max_batch

    @torch.inference_mode()
    def add(self, sequence: Sequence) -> None:
        """Take a sequence in and prefill its prompt (cropped to the last block_size tokens)."""
        if self.full:
            raise RuntimeError(f"the decoder already holds {self.max_batch} sequences")
        if not sequence.tokens:
            raise ValueError("a sequence needs at least one token to start from")
        sequence.tokens = sequence.tokens[-self.config.block_size :]
        self.sequences.append(sequence)
        self.logits = torch.cat([self.logits, self._prefill(len(self.sequences) - 1, sequence.tokens)[None]])
        sequence.cached = len(sequence.tokens)

    def remove(self, sequence: Sequence) -> None:
        """Let a sequence go (finished or cancelled); the last one moves into its cache row."""
        row, last = self.sequences.index(sequence), len(self.sequences) - 1
        order = list(range(last))
        if row != last:
            self.cache.copy_row(last, row)
            self.sequences[row] = self.sequences[last]
            order[row] = last
        self.sequences.pop()
        self.logits = self.logits[order]

    @torch.inference_mode()
    def step(self) -> list[Token]:
        """One new token for every sequence; finished sequences leave. The others then run one
        position further, together, so their next logits are ready for the next step."""
        if not self.sequences:
            return []
        logits = self.logits
        settings = [(s.temperature, s.top_k, s.top_p) for s in self.sequences]
        new = sample_rows(logits, settings, [s.next_uniform() if s.temperature else 0.0 for s in self.sequences])
        tokens = [Token(s, token, logits, row) for row, (s, token) in enumerate(zip(self.sequences, new, strict=True))]
        for sequence, token in zip(self.sequences, new, strict=True):
            sequence.tokens.append(token)
            sequence.produced += 1
        for sequence in [s for s in self.sequences if s.done]:
            self.remove(sequence)
        keep = self.config.block_size // 2
        for row, sequence in enumerate(self.sequences):
            if sequence.cached == self.config.block_size:  # no room for the new token: re-prefill the recent half
                sequence.tokens = sequence.tokens[-keep:]
                self._prefill(row, sequence.tokens[:-1])
                sequence.cached = keep - 1
        if self.sequences:
            last = torch.tensor([[s.tokens[-1]] for s in self.sequences])
            positions = torch.tensor([s.cached for s in self.sequences])
            self.logits = self.backend(last, positions, self.cache)[:, -1]  # its rows 0..B-1: the sequences'
            for sequence in self.sequences:
                sequence.cached += 1
        return tokens

    def _prefill(self, row: int, tokens: list[int]) -> torch.Tensor:
        """Run `tokens` at positions 0.. in cache row `row`; returns the last position's logits (V,)."""
        return self.backend(torch.tensor([tokens]), torch.zeros(1, dtype=torch.long), self.cache.rows(row, row + 1))[
            0, -1
        ]


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


def start(
    tokenizer: CharTokenizer,
    prompt: object,
    max_new_tokens: object,
    temperature: object = 0.8,
    seed: object = None,
    top_k: object = None,
    top_p: object = None,
    num_samples: object = 1,
) -> tuple[str, list[Sequence]]:
    """Check a request and return its cleaned prompt and one Sequence per sample, or raise InputError.

    Sample i draws from a generator seeded with seed + i (so the first is the same text as a single
    sample with that seed); without a seed, each is seeded at random. A prompt longer than the
    context conditions the model with its last block_size characters.
    """
    text = clean_prompt(tokenizer, prompt)
    max_new_tokens, temperature, top_k, top_p, num_samples = check_settings(
        max_new_tokens, temperature, top_k, top_p, num_samples
    )
    seed = None if seed is None else _whole_number("the seed", seed, 0, MAX_SEED)
    ids = tokenizer.encode(text or EMPTY_PROMPT_CONTEXT)
    sequences = []
    for i in range(num_samples):
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed + i)
        sequences.append(Sequence(list(ids), max_new_tokens, temperature, top_k, top_p, generator))
    return text, sequences


def decode(backend: Backend, sequences: list[Sequence]) -> Iterator[list[Token]]:
    """Run sequences to the end, side by side, here and now: one list of new tokens per step."""
    decoder = Decoder(backend, len(sequences))
    for sequence in sequences:
        decoder.add(sequence)
    while decoder.sequences:
        yield decoder.step()


class TextStep(NamedTuple):
    chars: list[str]  # the new character of each sample
    probs: torch.Tensor  # (num_samples, V) the model's distribution for this character, at temperature 1


def complete(
    backend: Backend,
    tokenizer: CharTokenizer,
    prompt: object,
    max_new_tokens: object,
    temperature: object = 0.8,
    seed: object = None,
    top_k: object = None,
    top_p: object = None,
    num_samples: object = 1,
) -> tuple[str, Iterator[TextStep]]:
    """Check the input (see `start`), then return the cleaned prompt and a stream of the new characters.

    Each sample is the prompt followed by exactly max_new_tokens characters. Raises InputError, before
    any generation, for input that cannot be used.
    """
    text, sequences = start(tokenizer, prompt, max_new_tokens, temperature, seed, top_k, top_p, num_samples)

    def steps() -> Iterator[TextStep]:
        for new in decode(backend, sequences):
            new.sort(key=lambda t: sequences.index(t.sequence))
            probs = torch.stack([t.logits for t in new]).float().softmax(dim=-1)
            yield TextStep([tokenizer.vocab[t.token] for t in new], probs)

    return text, steps()


def complete_text(
    model: GPT,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    seed: int | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> str:
    """The prompt (cleaned as the page cleans it) followed by exactly `max_new_tokens` characters,
    decoded with PyTorch on this process's threads. The same settings and checks as the page's
    /generate; raises InputError for input that cannot be used."""
    tokenizer = CharTokenizer(model.config.vocab)
    text, steps = complete(TorchBackend(model), tokenizer, prompt, max_new_tokens, temperature, seed, top_k, top_p)
    return text + "".join(step.chars[0] for step in steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Autocomplete a prompt with the trained model.")
    parser.add_argument("prompt", nargs="?", default="", help="text to continue (empty: start a new line)")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=200, help=f"characters to add (1-{MAX_NEW_TOKENS})")
    parser.add_argument("-t", "--temperature", type=float, default=0.8, help="0 is greedy; higher is more random")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k likeliest characters")
    parser.add_argument("--top-p", type=float, default=None, help="sample only from the likeliest characters whose "
                        "probabilities add up to p (nucleus sampling)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling for repeatable output")
    parser.add_argument("--num-samples", type=int, default=1, help="independent continuations, sampled as a batch "
                        "(sample i uses seed + i)")  # fmt: skip
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="how forward passes run: auto (the C++ "
                        "step where it builds, else torch), torch (float32), int8 (int8 weights), cpp (C++ step, "
                        "float32 with an int8 KV cache; built on first use)")  # fmt: skip
    parser.add_argument("--model", "--weights", dest="weights", default=str(WEIGHTS_DIR),
                        help="weights folder, or USER/NAME of a Hugging Face Hub repo")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        backend = load_backend(load_model(args.weights), args.backend)
        tokenizer = CharTokenizer(backend.model.config.vocab)
        prompt, steps = complete(
            backend, tokenizer, args.prompt, args.max_new_tokens, args.temperature,
            args.seed, args.top_k, args.top_p, args.num_samples,
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
    except (ValueError, RuntimeError) as err:  # bad input or weights, a backend this model cannot use, no C++ build
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

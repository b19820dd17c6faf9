"""Autocomplete text: `python -m tinygpt.generate "PROMPT" -n 200 --temperature 0.8 --seed 1`.

`complete` is what the app, the API and the command line share: it checks and cleans the input,
then streams the new characters as the model samples them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator

import torch

from tinygpt.checkpoint import WEIGHTS_DIR, load_model
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer, UnknownCharactersError

MAX_NEW_TOKENS = 2000
MAX_TEMPERATURE = 2.0
EMPTY_PROMPT_CONTEXT = "\n"  # an empty prompt starts the model at the beginning of a line


class InputError(ValueError):
    """Input a person can fix; the message says how."""


def check_settings(max_new_tokens: object, temperature: object) -> tuple[int, float]:
    """Validate the token count and temperature; return them as int and float."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, float)):
        raise InputError(f"the number of characters must be a whole number, not {max_new_tokens!r}")
    if max_new_tokens != int(max_new_tokens) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(
            f"the number of characters must be a whole number from 1 to {MAX_NEW_TOKENS}, not {max_new_tokens}"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise InputError(f"temperature must be a number, not {temperature!r}")
    if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise InputError(f"temperature must be between 0 (greedy) and {MAX_TEMPERATURE}, not {temperature}")
    return int(max_new_tokens), float(temperature)


def clean_prompt(tokenizer: CharTokenizer, prompt: object) -> str:
    """The prompt mapped into the model's alphabet (see CharTokenizer.normalize), or InputError."""
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text, not {type(prompt).__name__}")
    try:
        return tokenizer.normalize(prompt)
    except UnknownCharactersError as err:
        raise InputError(str(err)) from None


def complete(
    model: GPT,
    tokenizer: CharTokenizer,
    prompt: object,
    max_new_tokens: object,
    temperature: object = 0.8,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the cleaned prompt, then each new character as it is sampled.

    Joined, the pieces are the prompt followed by exactly max_new_tokens characters. A prompt longer
    than the context is still returned whole; the model conditions on its last block_size characters.
    Raises InputError (before yielding anything) for input that cannot be used.
    """
    text = clean_prompt(tokenizer, prompt)
    max_new_tokens, temperature = check_settings(max_new_tokens, temperature)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    idx = torch.tensor([tokenizer.encode(text or EMPTY_PROMPT_CONTEXT)], dtype=torch.long)
    yield text
    for token in model.stream(idx, max_new_tokens, temperature, generator):
        yield tokenizer.vocab[token.item()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Autocomplete a prompt with the trained model.")
    parser.add_argument("prompt", nargs="?", default="", help="text to continue (empty: start a new line)")
    parser.add_argument("-n", "--max-new-tokens", type=int, default=200, help=f"characters to add (1-{MAX_NEW_TOKENS})")
    parser.add_argument("-t", "--temperature", type=float, default=0.8, help="0 is greedy; higher is more random")
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling for repeatable output")
    parser.add_argument("--weights", default=str(WEIGHTS_DIR), help="weights folder, or hf://USER/NAME on the Hub")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.weights)
        pieces = complete(
            model, CharTokenizer(model.config.vocab), args.prompt, args.max_new_tokens, args.temperature, args.seed
        )
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

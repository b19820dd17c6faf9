import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tinygpt.generate import MAX_NEW_TOKENS, InputError, complete
from tinygpt.tokenizer import CharTokenizer


def run_complete(model, prompt, n=20, temperature=0.8, seed=1) -> str:
    return "".join(complete(model, CharTokenizer(model.config.vocab), prompt, n, temperature, seed))


def test_returns_the_prompt_followed_by_exactly_n_characters(tiny_model):
    text = run_complete(tiny_model, "ROMEO:", n=37)
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 37


def test_same_seed_same_text_other_seed_other_text(tiny_model):
    assert run_complete(tiny_model, "Hi", seed=3) == run_complete(tiny_model, "Hi", seed=3)
    assert run_complete(tiny_model, "Hi", seed=3) != run_complete(tiny_model, "Hi", seed=4)


def test_temperature_zero_is_greedy(tiny_model):
    greedy = run_complete(tiny_model, "Hi", n=30, temperature=0, seed=1)
    assert greedy == run_complete(tiny_model, "Hi", n=30, temperature=0, seed=2)
    tokenizer = CharTokenizer(tiny_model.config.vocab)
    logits, _ = tiny_model(torch.tensor([tokenizer.encode("Hi")]))
    assert greedy[2] == tokenizer.vocab[logits[0, -1].argmax().item()]


def test_empty_prompt_starts_from_a_newline(tiny_model):
    text = run_complete(tiny_model, "", n=15, temperature=0)
    assert len(text) == 15
    assert text == run_complete(tiny_model, "\n", n=15, temperature=0)[1:]


def test_prompt_longer_than_the_context_is_returned_whole(tiny_model):
    long_prompt = "First Citizen:\nBefore we proceed any further, hear me speak."  # > 16 = block_size
    text = run_complete(tiny_model, long_prompt, n=10, temperature=0)
    assert text.startswith(long_prompt) and len(text) == len(long_prompt) + 10
    # Only the last block_size characters condition the model.
    cropped = run_complete(tiny_model, long_prompt[-16:], n=10, temperature=0)
    assert text[len(long_prompt) :] == cropped[16:]


def test_prompt_is_normalized(tiny_model):
    text = run_complete(tiny_model, "\u201cCaf\u00e9\u201d\tnow\r\n", n=5)
    assert text.startswith("'Cafe' now\n")


@pytest.mark.parametrize(
    ("prompt", "n", "temperature", "message"),
    [
        ("I was born in 1564", 10, 0.8, "'1', '4', '5', '6'"),
        ("hello \U0001f600", 10, 0.8, "'\U0001f600'"),
        ("hi", 0, 0.8, f"from 1 to {MAX_NEW_TOKENS}"),
        ("hi", MAX_NEW_TOKENS + 1, 0.8, f"from 1 to {MAX_NEW_TOKENS}"),
        ("hi", 2.5, 0.8, "whole number"),
        ("hi", "ten", 0.8, "whole number"),
        ("hi", 10, -0.1, "between 0"),
        ("hi", 10, 2.5, "between 0"),
        ("hi", 10, float("nan"), "between 0"),
        ("hi", 10, "hot", "must be a number"),
        (42, 10, 0.8, "must be text"),
    ],
)
def test_bad_input_raises_a_clear_input_error(tiny_model, prompt, n, temperature, message):
    with pytest.raises(InputError, match=None) as err:
        run_complete(tiny_model, prompt, n=n, temperature=temperature)
    assert message in str(err.value)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tinygpt.generate", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_prints_the_completion(tiny_weights):
    result = run_cli("ROMEO:", "-n", "25", "--temperature", "0.8", "--seed", "1", "--weights", str(tiny_weights))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) == len("ROMEO:") + 25 + 1  # + final newline
    again = run_cli("ROMEO:", "-n", "25", "--temperature", "0.8", "--seed", "1", "--weights", str(tiny_weights))
    assert again.stdout == result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["year 1999"], "'1', '9'"),
        (["hi", "-n", "0"], "from 1 to"),
        (["hi", "--temperature", "9"], "between 0"),
        (["hi", "--weights", "no/such/dir"], "not found"),
    ],
)
def test_cli_bad_input_gives_a_message_not_a_traceback(tiny_weights, args, message):
    weights = [] if "--weights" in args else ["--weights", str(tiny_weights)]
    result = run_cli(*args, *weights)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr

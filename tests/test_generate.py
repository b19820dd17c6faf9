import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tinygpt.files.checkpoint import save_model
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving.backends import TorchBackend
from tinygpt.serving.generate import MAX_NEW_TOKENS, MAX_NUM_SAMPLES, MAX_PROMPT_CHARS, InputError, complete


def run_complete(model, prompt, n=20, temperature=0.8, seed=1, **sampling) -> str:
    text, steps = complete(
        TorchBackend(model), CharTokenizer(model.config.vocab), prompt, n, temperature, seed, **sampling
    )
    return text + "".join(step.chars[0] for step in steps)


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
        ("x" * (MAX_PROMPT_CHARS + 1), 10, 0.8, "the limit is"),
    ],
)
def test_bad_input_raises_a_clear_input_error(tiny_model, prompt, n, temperature, message):
    with pytest.raises(InputError, match=None) as err:
        complete(TorchBackend(tiny_model), CharTokenizer(tiny_model.config.vocab), prompt, n, temperature)  # eagerly
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"top_k": -1}, "top-k must be a whole number 0 or more"),
        ({"top_k": 2.5}, "top-k must be a whole number"),
        ({"top_k": "5"}, "top-k must be a whole number"),
        ({"top_p": 0}, "top-p must be above 0"),
        ({"top_p": 1.5}, "top-p must be between"),
        ({"top_p": float("nan")}, "top-p must be between"),
        ({"num_samples": 0}, f"from 1 to {MAX_NUM_SAMPLES}"),
        ({"num_samples": MAX_NUM_SAMPLES + 1}, f"from 1 to {MAX_NUM_SAMPLES}"),
    ],
)
def test_bad_sampling_settings_raise_a_clear_input_error(tiny_model, sampling, message):
    with pytest.raises(InputError) as err:
        complete(TorchBackend(tiny_model), CharTokenizer(tiny_model.config.vocab), "hi", 10, 0.8, **sampling)
    assert message in str(err.value)


def test_top_k_zero_and_top_p_one_change_nothing(tiny_model):
    plain = run_complete(tiny_model, "Hi", n=30, temperature=1.0, seed=9)
    assert run_complete(tiny_model, "Hi", n=30, temperature=1.0, seed=9, top_k=0, top_p=1.0) == plain
    assert run_complete(tiny_model, "Hi", n=30, temperature=1.0, seed=9, top_k=1) == run_complete(
        tiny_model, "Hi", n=30, temperature=0
    )


def test_several_samples_at_once(tiny_model):
    text, steps = complete(
        TorchBackend(tiny_model), CharTokenizer(tiny_model.config.vocab), "Hi", 25, 1.0, 3, num_samples=3
    )
    samples = [text + "".join(chars) for chars in zip(*(step.chars for step in steps), strict=True)]
    assert len(samples) == 3 and all(s.startswith("Hi") and len(s) == 27 for s in samples)
    assert len(set(samples)) > 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tinygpt.generate", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_prints_several_samples(tiny_weights):
    result = run_cli("Hi", "-n", "10", "--num-samples", "2", "--seed", "1", "--top-k", "5", "--top-p", "0.9",
                     "--backend", "int8", "--weights", str(tiny_weights))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("--- sample") == 2


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


def test_streamed_text_is_the_seeds_final_text(tiny_model):
    tokenizer = CharTokenizer(tiny_model.config.vocab)
    streamed = run_complete(tiny_model, "Hi", n=15, temperature=0.8, seed=4)  # within the 16-character window
    seeded = torch.Generator().manual_seed(4)
    full = tiny_model.generate(torch.tensor([tokenizer.encode("Hi")]), 15, 0.8, generator=seeded)
    assert streamed == tokenizer.decode(full[0].tolist())


def test_cli_refuses_a_backend_the_model_cannot_use_in_one_line(tmp_path, tokenizer):
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab=tokenizer.vocab, block_size=16, n_layer=1, n_head=2, n_embd=24)), tmp_path)
    result = run_cli("Hi", "-n", "5", "--backend", "int8", "--weights", str(tmp_path))
    assert result.returncode == 2
    assert "multiple of 16" in result.stderr and "Traceback" not in result.stderr

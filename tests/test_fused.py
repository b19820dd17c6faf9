"""The C++ decode step (tinygpt.fused): the same logits and text as the PyTorch model, and its limits."""

import os

import pytest
import torch

from tinygpt import fused
from tinygpt.config import GPTConfig
from tinygpt.draft import NGramDraft
from tinygpt.fused import MAX_ROWS, FusedGPT
from tinygpt.generate import complete, for_inference, prefill, stream, stream_speculative
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    """Build the extension once. CI must have a compiler; elsewhere its absence skips these tests."""
    if fused.extension() is None:
        if os.environ.get("CI"):
            pytest.fail("the C++ decode step could not be built")
        pytest.skip("the C++ decode step could not be built here (no C++ compiler?)")


# Widths that are not multiples of the kernel's 64-column panels exercise its padding.
SHAPES = [
    dict(n_layer=2, n_head=2, n_embd=32),
    dict(n_layer=3, n_head=3, n_embd=72),
    dict(n_layer=1, n_head=4, n_embd=128),
]


def model_of(tokenizer: CharTokenizer, block_size: int = 24, **shape) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab=tokenizer.vocab, block_size=block_size, dropout=0.0, **shape)).eval()
    with torch.no_grad():  # larger than the initial weights, so differences would show
        for p in model.parameters():
            p.mul_(8)
    return model


@pytest.mark.parametrize("shape", SHAPES)
def test_cached_steps_of_every_size_give_the_full_recompute_logits(tokenizer, shape):
    model = model_of(tokenizer, **shape)
    fast = FusedGPT(model)
    idx = torch.randint(model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(idx)[0]
        prefill(fast, idx[:, :3])
        pos = 3
        for rows in [1, 2, 5, MAX_ROWS, 1, 4]:  # up to position 24, the end of the window
            logits = fast(idx[:, pos : pos + rows], input_pos=pos)[0]
            # Logits reach ~25 here; PyTorch's own cached steps differ from the recompute by as much.
            torch.testing.assert_close(logits, full[:, pos : pos + rows], atol=2e-4, rtol=1e-5)
            pos += rows
        assert pos == 24


class CountingDecoder:
    def __init__(self, decoder) -> None:
        self.decoder, self.calls = decoder, 0

    def use_cache(self, keys, values) -> None:
        self.decoder.use_cache(keys, values)

    def step(self, tokens, pos):
        self.calls += 1
        return self.decoder.step(tokens, pos)


def test_only_short_steps_of_one_sequence_take_the_cpp_path(tokenizer):
    fast = FusedGPT(model_of(tokenizer, **SHAPES[0]))
    fast.decoder = counting = CountingDecoder(fast.decoder)
    idx = torch.randint(fast.config.vocab_size, (2, 20))
    with torch.inference_mode():
        prefill(fast, idx[:1])  # 20 tokens: PyTorch
        assert counting.calls == 0
        fast(idx[:1, :MAX_ROWS], input_pos=0)
        assert counting.calls == 1
        prefill(fast, idx)  # two sequences: PyTorch, prefill and decode
        fast(idx[:, :1], input_pos=20)
        assert counting.calls == 1


def test_greedy_text_matches_pytorch_past_the_window_plain_and_speculative(tokenizer, corpus):
    model = model_of(tokenizer, **SHAPES[1])
    fast = FusedGPT(model_of(tokenizer, **SHAPES[1]))
    draft = NGramDraft(torch.tensor(tokenizer.encode(corpus[:20_000])), 4)
    idx = torch.tensor([tokenizer.encode("ROMEO:\nWhat")])
    expected = [s.tokens.tolist() for s in stream(model, idx, 100, temperature=0)]  # 100 > 4 windows of 24
    assert [s.tokens.tolist() for s in stream(fast, idx, 100, temperature=0)] == expected
    speculative = [s.tokens.tolist() for s in stream_speculative(fast, idx, 100, draft, temperature=0)]
    assert [t[0] for t in speculative] == [t[0] for t in expected]


def test_seeded_sampling_and_batches_match_pytorch(tokenizer):
    model = model_of(tokenizer, **SHAPES[0])
    fast = FusedGPT(model_of(tokenizer, **SHAPES[0]))
    for num_samples in (1, 3):
        texts = []
        for m in (model, fast):
            _, steps = complete(m, tokenizer, "First", 60, temperature=1.0, seed=7, num_samples=num_samples)
            texts.append(["".join(chars) for chars in zip(*(s.chars for s in steps), strict=True)])
        assert texts[0] == texts[1]


def test_for_inference_uses_it_for_float32_only_and_falls_back_without_it(tokenizer, monkeypatch):
    assert isinstance(for_inference(model_of(tokenizer, **SHAPES[0]), "float32", fused=True), FusedGPT)
    assert isinstance(for_inference(model_of(tokenizer, **SHAPES[0]), "float32"), GPT)
    assert isinstance(for_inference(model_of(tokenizer, **SHAPES[0]), "int8", fused=True), GPT)
    monkeypatch.setattr("tinygpt.generate.extension", lambda: None)
    assert isinstance(for_inference(model_of(tokenizer, **SHAPES[0]), "float32", fused=True), GPT)


def test_the_cpp_step_refuses_what_it_cannot_compute(tokenizer):
    fast = FusedGPT(model_of(tokenizer, **SHAPES[0]))
    with pytest.raises(RuntimeError, match="use_cache"):
        fast.decoder.step(torch.tensor([1]), 0)
    fast.setup_cache(1)
    with pytest.raises(RuntimeError, match="context window"):
        fast.decoder.step(torch.tensor([1, 2]), 23)
    with pytest.raises(RuntimeError, match="out of range"):
        fast.decoder.step(torch.tensor([len(tokenizer.vocab)]), 0)
    with pytest.raises(RuntimeError, match="caches"):
        fast.decoder.use_cache([torch.zeros(1, 2, 5, 16)] * 2, [torch.zeros(1, 2, 5, 16)] * 2)


def test_a_failed_build_says_so_in_one_line_and_leaves_pytorch_in_charge(monkeypatch, capsys):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    assert fused.extension.__wrapped__() is None  # the uncached function: a real build attempt
    err = capsys.readouterr().err
    assert "could not be built, decoding with PyTorch (no C++ compiler found)" in err and len(err.splitlines()) == 1

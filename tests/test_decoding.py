"""Cached decoding against the seed's recompute-everything generate, the window modes, and sampling."""

import pytest
import torch

from tinygpt.generate import decode_one, for_inference, prefill, stream
from tinygpt.model import GPT
from tinygpt.sampling import filter_logits, sample_next

# tiny_config has block_size 16, so 40 new tokens run well past the window.


def tokens(model: GPT, idx: torch.Tensor, n: int, **kwargs) -> torch.Tensor:
    return torch.stack([step.tokens for step in stream(model, idx, n, **kwargs)], dim=1)


def test_cached_decoding_gives_the_full_recompute_logits(tiny_model, tiny_config):
    torch.manual_seed(0)
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    with torch.inference_mode():
        full = tiny_model(idx)[0]
        torch.testing.assert_close(prefill(tiny_model, idx[:, :5]), full[:, 4], atol=1e-6, rtol=1e-5)
        for pos in range(5, tiny_config.block_size):
            cached = decode_one(tiny_model, idx[:, pos : pos + 1], pos)
            torch.testing.assert_close(cached, full[:, pos], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("prompt_len", [1, 5, 16, 40])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_exact_window_reproduces_the_seeds_generate(tiny_model, tiny_config, prompt_len, temperature):
    torch.manual_seed(2)
    idx = torch.randint(tiny_config.vocab_size, (1, prompt_len))
    seed = dict(temperature=temperature, generator=torch.Generator().manual_seed(5))
    expected = tiny_model.generate(idx, 40, **seed)[:, prompt_len:]
    seed = dict(temperature=temperature, generator=torch.Generator().manual_seed(5))
    assert torch.equal(tokens(tiny_model, idx, 40, window="exact", **seed), expected)


def reprefill_reference(model: GPT, idx: torch.Tensor, n: int) -> list[int]:
    """The documented "fast" behaviour, computed the slow way: full forward passes over a context
    that is cut back to its last block_size // 2 tokens whenever it outgrows block_size."""
    context, out = idx[0, -model.config.block_size :].tolist(), []
    for _ in range(n):
        token = model(torch.tensor([context]))[0][0, -1].argmax().item()
        out.append(token)
        context.append(token)
        if len(context) > model.config.block_size:
            context = context[-(model.config.block_size // 2) :]
    return out


@pytest.mark.parametrize("prompt_len", [3, 16, 30])
def test_fast_window_reprefills_the_recent_half(tiny_model, tiny_config, prompt_len):
    torch.manual_seed(3)
    idx = torch.randint(tiny_config.vocab_size, (1, prompt_len))
    fast = tokens(tiny_model, idx, 45, temperature=0)
    assert fast[0].tolist() == reprefill_reference(tiny_model, idx, 45)
    # Within the first window both modes agree exactly.
    exact = tokens(tiny_model, idx, 45, temperature=0, window="exact")
    inside = tiny_config.block_size - min(prompt_len, tiny_config.block_size) + 1
    assert torch.equal(fast[:, :inside], exact[:, :inside])


def test_streamed_probabilities_are_the_models_distribution(tiny_model):
    idx = torch.tensor([[4, 8, 15]])
    steps = list(stream(tiny_model, idx, 3, temperature=0))
    expected = tiny_model(idx)[0][0, -1].softmax(-1)
    torch.testing.assert_close(steps[0].probs[0], expected)
    assert steps[0].tokens.item() == expected.argmax().item()
    assert all(torch.allclose(s.probs.sum(-1), torch.ones(1)) for s in steps)


def test_samples_are_batched_and_independent(tiny_model):
    idx = torch.tensor([[1, 2, 3]]).repeat(4, 1)
    sampled = tokens(tiny_model, idx, 30, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (4, 30)
    assert len({tuple(row) for row in sampled.tolist()}) > 1
    greedy = tokens(tiny_model, idx, 30, temperature=0)
    assert all(torch.equal(row, greedy[0]) for row in greedy)


def test_int8_weights_stay_close_to_float32(tiny_config):
    torch.manual_seed(0)
    exact = GPT(tiny_config).eval()
    same = GPT(tiny_config)
    same.load_state_dict(exact.state_dict())
    quantized = for_inference(same, "int8")
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    reference, approx = exact(idx)[0].softmax(-1), quantized(idx)[0].softmax(-1)
    assert (reference - approx).abs().max() < 0.01
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    assert quantized.num_params() == exact.num_params()
    with pytest.raises(ValueError, match="precision"):
        for_inference(exact, "int4")


# --- Sampling filters ---------------------------------------------------------------------------


def test_top_k_never_samples_outside_the_k_likeliest():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    allowed = logits.topk(5, dim=-1).indices
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        token = sample_next(logits, temperature=2.0, top_k=5, generator=g)
        assert (allowed == token).any(dim=-1).all()
    assert torch.isfinite(filter_logits(logits, top_k=5)).sum(-1).tolist() == [5, 5, 5]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.50, 0.25, 0.15, 0.10]]).log()
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.9) == [True, True, True, False]
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.01) == [True, False, False, False]  # the likeliest token always stays
    g = torch.Generator().manual_seed(0)
    drawn = {sample_next(logits, 1.5, top_p=0.6, generator=g).item() for _ in range(300)}
    assert drawn == {0, 1}


def test_temperature_zero_is_argmax_and_temperature_spreads():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert sample_next(logits, 0).tolist() == [[1], [0]]
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits[:1], 0.05, generator=g).item() for _ in range(50)} == {1}
    assert {sample_next(logits[:1], 100.0, generator=g).item() for _ in range(200)} == {0, 1, 2}

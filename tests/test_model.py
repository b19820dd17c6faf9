import math

import pytest
import torch
import torch.nn.functional as F

from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import KVCache, loaded, stored


def test_shapes_and_loss(tiny_model, tiny_config):
    idx = torch.randint(tiny_config.vocab_size, (3, tiny_config.block_size))
    logits, loss = tiny_model(idx)
    assert logits.shape == (3, tiny_config.block_size, tiny_config.vocab_size)
    assert loss is None
    _, loss = tiny_model(idx, targets=idx)
    # Freshly initialised, the model is close to uniform over the vocabulary.
    assert loss.shape == () and abs(loss.item() - math.log(tiny_config.vocab_size)) < 0.1


def test_sequence_longer_than_context_is_refused(tiny_model, tiny_config):
    with pytest.raises(ValueError, match="block_size"):
        tiny_model(torch.zeros(1, tiny_config.block_size + 1, dtype=torch.long))


def test_causality_later_characters_never_change_earlier_logits(tiny_model, tiny_config):
    torch.manual_seed(1)
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 7) % tiny_config.vocab_size
    before, _ = tiny_model(idx)
    after, _ = tiny_model(changed)
    torch.testing.assert_close(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_attention_equals_the_seeds_per_head_computation(tiny_model, tiny_config):
    """Seed steps 8-9: per head softmax(mask(q k^T / sqrt(H))) v, heads concatenated, projected."""
    attn = tiny_model.blocks[0].attn
    x = torch.randn(2, tiny_config.block_size, tiny_config.n_embd)
    T, H = tiny_config.block_size, tiny_config.head_size
    q, k, v = attn.qkv(x).split(tiny_config.n_embd, dim=2)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    heads = []
    for h in range(tiny_config.n_head):
        cols = slice(h * H, (h + 1) * H)
        weights = q[..., cols] @ k[..., cols].transpose(-2, -1) / math.sqrt(H)
        weights = F.softmax(weights.masked_fill(~mask, float("-inf")), dim=-1)
        heads.append(weights @ v[..., cols])
    expected = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_residual_projections_start_smaller(tiny_model, tiny_config):
    proj_std = tiny_model.blocks[0].attn.proj.weight.std().item()
    assert proj_std < 0.02 / math.sqrt(2 * tiny_config.n_layer) * 1.5
    assert tiny_model.blocks[0].attn.qkv.weight.std().item() > 0.015


def test_optimizer_decays_matrices_only(tiny_model):
    decay, no_decay = tiny_model.configure_optimizer().param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert all(p.dim() == 2 for p in decay["params"])
    n_decayed = sum(p.numel() for p in decay["params"]) + sum(p.numel() for p in no_decay["params"])
    assert n_decayed == tiny_model.num_params()


def test_generate_returns_prompt_plus_n_tokens_and_is_seeded(tiny_model):
    idx = torch.tensor([[1, 2, 3]])
    out = tiny_model.generate(idx, 25, temperature=1.0, generator=torch.Generator().manual_seed(7))
    again = tiny_model.generate(idx, 25, temperature=1.0, generator=torch.Generator().manual_seed(7))
    other = tiny_model.generate(idx, 25, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert out.shape == (1, 28) and torch.equal(out[:, :3], idx)
    assert torch.equal(out, again)
    assert not torch.equal(out, other)


def test_config_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab="ab", n_embd=30, n_head=4)


def test_an_int8_cache_keeps_each_vector_to_half_a_step_of_its_own_scale():
    x = torch.randn(3, 5, 64) * torch.tensor([1e-3, 1.0, 40.0])[:, None, None]
    x[0, 0] = 0  # a vector of zeros: scale and values stay finite
    values, scale = stored(x, torch.int8)
    assert values.dtype == torch.int8 and values.abs().max() == 127
    assert torch.equal(scale, (x.abs().amax(-1) / 127).clamp_min(torch.finfo(torch.float32).tiny))
    assert torch.all((loaded(values, scale) - x).abs() <= scale[..., None] / 2 * (1 + 1e-6))
    assert torch.equal(loaded(values, scale)[0, 0], torch.zeros(64))
    assert stored(x, torch.float16)[1] is None and torch.equal(loaded(*stored(x, torch.float16)), x.half().float())


def test_an_int8_cache_moves_scales_with_their_rows_and_converts_to_and_fro(tiny_config):
    cache = KVCache.empty(tiny_config, 3, torch.int8)
    H, D = tiny_config.n_head, tiny_config.head_size
    k, v = torch.randn(3, H, 4, D), torch.randn(3, H, 4, D) * torch.tensor([1.0, 5.0, 0.1])[:, None, None, None]
    cache.store(1, torch.arange(4).expand(3, 4), k, v)
    keys, values = cache.read(1, 3, 4)
    assert torch.all((values - v).abs() <= cache.v_scale[1, :, :, :4, None] / 2 * (1 + 1e-6))  # half a step
    assert torch.all((keys - k).abs() <= cache.k_scale[1, :, :, :4, None] / 2 * (1 + 1e-6))
    cache.copy_row(2, 0)
    assert torch.equal(cache.read(1, 3, 4)[1][0], values[2])
    as_float = cache.to(torch.float32)
    assert as_float.k_scale is None and torch.equal(as_float.read(1, 3, 4)[0], cache.read(1, 3, 4)[0])
    back = as_float.to(torch.int8)
    assert torch.equal(back.k, cache.k) and torch.equal(back.read(1, 3, 4)[1], cache.read(1, 3, 4)[1])

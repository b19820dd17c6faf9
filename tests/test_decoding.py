"""The decode loop (tinygpt.generate) against the seed's recompute-everything generate, and sampling."""

import torch

from tinygpt.model.gpt import GPT, KVCache, draw, filter_logits, sample_next
from tinygpt.serving.backends import TorchBackend
from tinygpt.serving.generate import UNIFORM_BLOCK, Decoder, Sequence, complete, decode, start

# tiny_config has block_size 16, so 40 new tokens run well past the window.


def generated(model: GPT, prompt: list[int], n: int, temperature: float = 0.0, seed: int = 0) -> list[int]:
    sequence = Sequence(list(prompt), n, temperature, generator=torch.Generator().manual_seed(seed))
    return [t.token for step in decode(TorchBackend(model), [sequence]) for t in step]


def test_cached_rows_at_different_positions_give_the_full_recompute_logits(tiny_model, tiny_config):
    torch.manual_seed(0)
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    cache = KVCache.empty(tiny_config, 2)
    with torch.inference_mode():
        full = tiny_model(idx)[0]
        prefilled = tiny_model(idx[:, :5], cache=cache, input_pos=torch.tensor([0, 0]))[0]
        torch.testing.assert_close(prefilled, full[:, :5], atol=1e-6, rtol=1e-5)
        tiny_model(idx[1:, 5:9], cache=cache.rows(1, 2), input_pos=torch.tensor([5]))  # row 1 runs ahead
        for pos in range(5, tiny_config.block_size - 4):  # then both advance, row 1 four positions ahead
            rows = torch.stack([idx[0, pos : pos + 1], idx[1, pos + 4 : pos + 5]])
            cached = tiny_model(rows, cache=cache, input_pos=torch.tensor([pos, pos + 4]))[0][:, 0]
            torch.testing.assert_close(cached, torch.stack([full[0, pos], full[1, pos + 4]]), atol=1e-6, rtol=1e-5)


def test_a_backend_with_another_cache_dtype_takes_over_the_sequences_in_progress(sharp_model, tiny_config):
    decoders = [Decoder(TorchBackend(sharp_model), 2) for _ in range(2)]
    for decoder in decoders:
        for prompt in ([1, 2, 3], [4, 5]):
            decoder.add(Sequence(prompt, 10, temperature=0.0))
        decoder.step()
    decoders[1].use(TorchBackend(sharp_model, cache_dtype=torch.int8))  # as the page does once C++ is built
    assert decoders[1].cache.k.dtype == decoders[1].cache.v.dtype == torch.int8
    for decoder in decoders:  # a token carries the logits it was drawn from: the step before's
        decoder.step()
    float32, int8 = (torch.stack([t.logits for t in decoder.step()]) for decoder in decoders)
    assert torch.equal(int8.argmax(-1), float32.argmax(-1))  # the same text, from keys and values rounded
    torch.testing.assert_close(int8, float32, atol=1e-2 * float32.abs().max().item(), rtol=0)
    assert not torch.equal(int8, float32)


def test_within_the_window_decoding_reproduces_the_seeds_generate(sharp_model, tiny_config):
    torch.manual_seed(2)
    for prompt_len in (1, 5, 12):
        idx = torch.randint(tiny_config.vocab_size, (1, prompt_len))
        n = tiny_config.block_size + 1 - prompt_len  # the last one is predicted from a full window
        for temperature in (0.0, 1.0):
            expected = sharp_model.generate(idx, n, temperature, generator=torch.Generator().manual_seed(5))
            assert generated(sharp_model, idx[0].tolist(), n, temperature, seed=5) == expected[0, prompt_len:].tolist()


def window_reference(model: GPT, prompt: list[int], n: int, temperature: float, seed: int) -> list[int]:
    """The documented window rule, computed the slow way: full forward passes over a context that is
    cut back to its last block_size // 2 tokens whenever it outgrows block_size."""
    generator = torch.Generator().manual_seed(seed)
    context, out = prompt[-model.config.block_size :], []
    for _ in range(n):
        token = sample_next(model(torch.tensor([context]))[0][:, -1], temperature, generator=generator).item()
        out.append(token)
        context.append(token)
        if len(context) > model.config.block_size:
            context = context[-(model.config.block_size // 2) :]
    return out


def test_past_the_window_decoding_reprefills_the_recent_half(sharp_model, tiny_config):
    torch.manual_seed(3)
    for prompt_len in (3, 16, 30):
        prompt = torch.randint(tiny_config.vocab_size, (prompt_len,)).tolist()
        for temperature in (0.0, 1.0):
            expected = window_reference(sharp_model, prompt, 45, temperature, seed=prompt_len)
            assert generated(sharp_model, prompt, 45, temperature, seed=prompt_len) == expected


def test_sequences_join_and_leave_between_steps_without_disturbing_the_others(sharp_model, tokenizer):
    alone = {p: generated(sharp_model, tokenizer.encode(p), 30, 1.0, seed=i) for i, p in enumerate(["ab", "Hi", "R"])}
    decoder = Decoder(TorchBackend(sharp_model), max_batch=2)
    sequences = {p: Sequence(tokenizer.encode(p), 30, 1.0, generator=torch.Generator().manual_seed(i))
                 for i, p in enumerate(alone)}  # fmt: skip
    out = {p: [] for p in alone}
    decoder.add(sequences["ab"])
    for step in range(40):
        if step == 3:
            decoder.add(sequences["Hi"])
        if step == 10:  # "ab" leaves half-way: "Hi" moves into its cache row, "R" takes the free one
            decoder.remove(sequences["ab"])
            decoder.add(sequences["R"])
        for t in decoder.step():
            out[next(p for p, s in sequences.items() if s is t.sequence)].append(t.token)
    assert out["Hi"] == alone["Hi"] and out["R"] == alone["R"]
    assert out["ab"] == alone["ab"][:10]
    assert decoder.sequences == []


def test_each_token_keeps_the_logits_it_was_drawn_from_while_sequences_leave(tiny_model):
    # The first sequence finishes at the first step and leaves; the last one moves into its row.
    prompts = [[4, 8, 15], [16, 23], [42]]
    decoder = Decoder(TorchBackend(tiny_model), 3)
    for prompt, n in zip(prompts, (1, 3, 3), strict=True):
        decoder.add(Sequence(list(prompt), n, temperature=0))
    first = decoder.step()
    decoder.step()
    with torch.inference_mode():
        for token, prompt in zip(first, prompts, strict=True):
            torch.testing.assert_close(token.logits, tiny_model(torch.tensor([prompt]))[0][0, -1])


def test_streamed_logits_and_probabilities_are_the_models(tiny_model, tokenizer):
    sequence = Sequence([4, 8, 15], 3, temperature=0)
    steps = list(decode(TorchBackend(tiny_model), [sequence]))
    expected = tiny_model(torch.tensor([[4, 8, 15]]))[0][0, -1].softmax(-1)
    torch.testing.assert_close(steps[0][0].logits.softmax(-1), expected)
    assert steps[0][0].token == expected.argmax().item()
    _, text_steps = complete(TorchBackend(tiny_model), tokenizer, tokenizer.decode([4, 8, 15]), 3, 0.0)
    torch.testing.assert_close(next(text_steps).probs, expected[None])  # what complete() streams


def test_samples_are_independent_and_sample_i_is_the_single_sample_of_seed_plus_i(tiny_model, tokenizer):
    _, sequences = start(tokenizer, "Hi", 30, 1.0, seed=7, num_samples=4)
    texts = [[] for _ in sequences]
    for step in decode(TorchBackend(tiny_model), sequences):
        for t in step:
            texts[sequences.index(t.sequence)].append(t.token)
    assert len({tuple(text) for text in texts}) > 1
    assert texts[2] == generated(tiny_model, tokenizer.encode("Hi"), 30, 1.0, seed=9)
    _, greedy = start(tokenizer, "Hi", 30, 0.0, num_samples=3)
    tokens = [[t.token for t in step] for step in decode(TorchBackend(tiny_model), greedy)]
    assert all(len(set(step)) == 1 for step in tokens)


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


def test_draw_follows_the_probabilities_and_never_picks_an_impossible_token():
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.2, 0.3, 0.4, 0.0]], dtype=torch.float64)
    # The extreme uniforms land on the first and last possible tokens, not on the zeros around them.
    assert draw(probs.expand(2, -1), torch.tensor([0.0, 1 - 2**-53], dtype=torch.float64)).tolist() == [5, 1]
    uniforms = torch.rand(40_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draw(probs.expand(len(uniforms), -1), uniforms), minlength=7) / len(uniforms)
    torch.testing.assert_close(counts, probs[0].float(), atol=0.01, rtol=0)


def test_a_sequence_takes_its_uniforms_in_blocks_exactly_as_one_at_a_time():
    # The decoder draws a block of uniforms per sequence; the reference draws one per token. They must be
    # the same numbers, across block boundaries, or a seed's text would depend on the path.
    sequence = Sequence([0], 1, generator=torch.Generator().manual_seed(7))
    one_at_a_time = torch.Generator().manual_seed(7)
    for _ in range(2 * UNIFORM_BLOCK + 3):
        assert sequence.next_uniform() == torch.rand(1, dtype=torch.float64, generator=one_at_a_time).item()

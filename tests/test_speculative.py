"""Speculative decoding: several-token steps in the cache, the n-gram draft, and exactness."""

from collections import Counter

import pytest
import torch

from tinygpt.draft import NGramDraft
from tinygpt.generate import LOOKAHEAD, complete, prefill, stream, stream_speculative, without
from tinygpt.model import GPT
from tinygpt.sampling import sampling_probs
from tinygpt.tokenizer import CharTokenizer


class FixedDraft:
    """Always proposes the same token: mostly wrong, so rejections are exercised."""

    def __init__(self, token: int) -> None:
        self.token = token

    def propose(self, ids: list[int], count: int) -> list[int]:
        return [self.token] * count


def speculative_tokens(model: GPT, idx: torch.Tensor, n: int, draft, **kwargs) -> list[int]:
    return [step.tokens.item() for step in stream_speculative(model, idx, n, draft, **kwargs)]


def test_several_tokens_at_an_offset_give_the_full_recompute_logits(tiny_model, tiny_config):
    torch.manual_seed(0)
    idx = torch.randint(tiny_config.vocab_size, (1, tiny_config.block_size))
    with torch.inference_mode():
        full = tiny_model(idx)[0]
        prefill(tiny_model, idx[:, :5])
        for start, end in [(5, 9), (9, 10), (10, 16)]:
            cached = tiny_model(idx[:, start:end], input_pos=start)[0]
            torch.testing.assert_close(cached, full[:, start:end], atol=1e-6, rtol=1e-5)


def test_the_draft_proposes_the_commonest_continuation_of_the_longest_known_context():
    tokenizer = CharTokenizer.from_text("abcd")
    draft = NGramDraft(torch.tensor(tokenizer.encode("abcabcdabd")), 4, orders=(3, 2, 1))
    propose = lambda text, count: tokenizer.decode(draft.propose(tokenizer.encode(text), count))  # noqa: E731
    assert propose("ab", 1) == "c"  # "ab" was followed by c twice, by d once
    assert propose("dab", 1) == "d"  # but "dab" by d: the longest context seen decides
    assert propose("dab", 3) == "dab"  # each draft extends the context: "abd", "bd" unseen, "d" -> a; "da" -> b
    assert propose("bb", 1) == "c"  # "bb" unseen: "b" was followed by c twice, by d once
    context = tokenizer.encode("ab")
    draft.propose(context, 2)
    assert context == tokenizer.encode("ab")  # the caller's list is left alone


def test_the_draft_of_a_missing_or_foreign_corpus_is_none(tmp_path, tokenizer):
    assert NGramDraft.from_corpus(tmp_path / "missing.txt", tokenizer) is None
    (tmp_path / "digits.txt").write_text("0123456789" * 10, encoding="utf-8")
    assert NGramDraft.from_corpus(tmp_path / "digits.txt", tokenizer) is None


def test_removing_a_rejected_draft_restores_the_models_distribution():
    torch.manual_seed(0)
    for _ in range(20):
        p = torch.rand(12, dtype=torch.float64).softmax(-1)
        d = torch.randint(12, ()).item()
        overall = p[d] * torch.nn.functional.one_hot(torch.tensor(d), 12) + (1 - p[d]) * without(p, d)
        torch.testing.assert_close(overall, p)


@pytest.mark.parametrize("prompt_len", [1, 3, 16, 30])
@pytest.mark.parametrize("lookahead", [1, LOOKAHEAD, 20])
def test_greedy_speculation_gives_the_plain_greedy_text(tiny_model, tiny_config, corpus, prompt_len, lookahead):
    torch.manual_seed(3)
    idx = torch.randint(tiny_config.vocab_size, (1, prompt_len))
    plain = [step.tokens.item() for step in stream(tiny_model, idx, 45, temperature=0)]
    right = NGramDraft(torch.tensor(idx[0].tolist() + plain), tiny_config.vocab_size)  # drafts mostly right
    for draft in (right, FixedDraft(0)):
        assert speculative_tokens(tiny_model, idx, 45, draft, temperature=0, lookahead=lookahead) == plain


@pytest.mark.parametrize("n", [1, 2, 5])
def test_speculation_yields_exactly_the_requested_count(tiny_model, n):
    steps = list(stream_speculative(tiny_model, torch.tensor([[1, 2]]), n, FixedDraft(3), temperature=1.0))
    assert len(steps) == n
    assert all(step.tokens.shape == (1,) and step.probs.shape == (1, tiny_model.config.vocab_size) for step in steps)


def test_speculative_samples_follow_the_models_distribution(tiny_config):
    """Three characters, top-k 2 (8 outcomes): 1000 speculative samples against the exact joint
    probabilities. A draft that always proposes one character is often rejected and sometimes kept."""
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # a peaked distribution, not the near-uniform one of a fresh model
    idx, options = torch.tensor([[5, 9]]), dict(temperature=0.9, top_k=2)

    def dist(context: list[int]) -> torch.Tensor:
        return sampling_probs(model(torch.tensor([context]))[0][:, -1], **options)[0]

    exact = {}
    with torch.no_grad():
        for a, pa in enumerate(dist([5, 9]).tolist()):
            for b, pb in enumerate(dist([5, 9, a]).tolist() if pa else []):
                for c, pc in enumerate(dist([5, 9, a, b]).tolist() if pb else []):
                    if pc:
                        exact[a, b, c] = pa * pb * pc
    draft = FixedDraft(max(exact, key=exact.get)[1])  # the likeliest second character
    generator = torch.Generator().manual_seed(0)
    n = 1000
    counts = Counter(tuple(speculative_tokens(model, idx, 3, draft, generator=generator, **options)) for _ in range(n))
    assert set(counts) <= set(exact)
    total_variation = sum(abs(counts[key] / n - p) for key, p in exact.items()) / 2
    assert total_variation < 0.08, total_variation


def test_complete_uses_the_draft_for_one_sample_and_plain_decoding_otherwise(tiny_model, tokenizer, monkeypatch):
    used = []
    import tinygpt.generate as generate

    real = generate.stream_speculative
    monkeypatch.setattr(generate, "stream_speculative", lambda *a, **k: used.append(1) or real(*a, **k))
    draft = FixedDraft(0)
    text, steps = complete(tiny_model, tokenizer, "ROMEO:", 20, 0.0, draft=draft)
    assert text == "ROMEO:" and len(list(steps)) == 20 and used == [1]
    for kwargs in (dict(num_samples=2), dict(window="exact")):
        _, steps = complete(tiny_model, tokenizer, "ROMEO:", 20, 0.0, draft=draft, **kwargs)
        assert len(list(steps)) == 20
    assert used == [1]

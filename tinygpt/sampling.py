"""Choosing the next character from the model's logits: temperature, top-k and top-p (nucleus).

A token is drawn by inverse transform sampling from one float64 uniform of the sequence's random
generator, rather than with torch.multinomial: the uniforms can then be drawn ahead, and a whole
batch, each row with its own generator, sampled in a few operations instead of a call per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits (B, C) with every token outside the allowed set set to -inf.

    top_k keeps the k likeliest tokens; top_p keeps the smallest set of likeliest tokens whose
    probabilities add up to at least p (always at least the likeliest one).
    """
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop_sorted[:, 0] = False  # even when top_p rounds to 0 in float32
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sampling_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution (B, C), in float64, that the next tokens are drawn from. Temperature 0 is greedy:
    all the probability on the likeliest token."""
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).double()
    # In float64, minus the largest logit: any temperature above 0, however tiny, then leaves the
    # likeliest token at 0 and sends the others towards -inf, instead of overflowing to inf or NaN.
    logits = logits.double()
    logits = filter_logits((logits - logits.max(dim=-1, keepdim=True).values) / temperature, top_k, top_p)
    return F.softmax(logits, dim=-1)


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token ids (B,) by inverse transform sampling: in row b, the first token whose cumulative
    probability reaches 1 - uniforms[b] (a uniform in [0, 1)) of the row's total."""
    cumulative = probs.cumsum(dim=-1)
    # 1 - u lies in (0, 1]: the threshold is above 0, so a token of probability 0 is never drawn, and
    # at most the total, so the count stays below the vocabulary size.
    threshold = (1 - uniforms).unsqueeze(-1) * cumulative[:, -1:]
    return (cumulative < threshold).sum(dim=-1)


def choose(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, uniforms: torch.Tensor | None
) -> torch.Tensor:
    """Token ids (B,) from logits (B, C): the likeliest at temperature 0 (uniforms unused), else drawn
    with one uniform per row."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return draw(sampling_probs(logits, temperature, top_k, top_p), uniforms)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, C). Temperature 0 means greedy; otherwise
    each row takes one float64 uniform from `generator`, in row order."""
    uniforms = None if temperature == 0 else torch.rand(logits.size(0), dtype=torch.float64, generator=generator)
    return choose(logits, temperature, top_k, top_p, uniforms).unsqueeze(-1)


def sample_rows(
    logits: torch.Tensor, settings: list[tuple[float, int | None, float | None]], uniforms: list[float]
) -> list[int]:
    """One token for each row of logits (B, C), row i with its own (temperature, top_k, top_p) and
    uniform (unused when greedy): the token `sample_next` draws for that row alone, given that
    uniform. Rows that share settings share the arithmetic, a few operations for the whole batch."""
    tokens = [0] * len(settings)
    groups: dict[tuple[float, int | None, float | None], list[int]] = {}
    for row, setting in enumerate(settings):
        groups.setdefault(setting, []).append(row)
    for (temperature, top_k, top_p), rows in groups.items():
        group = logits if len(rows) == len(settings) else logits[rows]
        u = torch.tensor([uniforms[row] for row in rows], dtype=torch.float64)
        for row, token in zip(rows, choose(group, temperature, top_k, top_p, u).tolist(), strict=True):
            tokens[row] = token
    return tokens

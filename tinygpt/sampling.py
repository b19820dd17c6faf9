"""Choosing the next character from the model's logits: temperature, top-k and top-p (nucleus)."""

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


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, C). Temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(sampling_probs(logits, temperature, top_k, top_p), num_samples=1, generator=generator)


def sample_rows(
    logits: torch.Tensor,
    settings: list[tuple[float, int | None, float | None]],
    generators: list[torch.Generator | None],
) -> list[int]:
    """One token for each row of logits (B, C), row i with its own (temperature, top_k, top_p) and
    generator: the token `sample_next` would draw for that row alone. Rows that share settings share
    the arithmetic; only the draws are made one row at a time."""
    tokens = [0] * len(settings)
    groups: dict[tuple[float, int | None, float | None], list[int]] = {}
    for row, setting in enumerate(settings):
        groups.setdefault(setting, []).append(row)
    for (temperature, top_k, top_p), rows in groups.items():
        if temperature == 0:
            for row, token in zip(rows, logits[rows].argmax(dim=-1).tolist(), strict=True):
                tokens[row] = token
            continue
        probs = sampling_probs(logits[rows], temperature, top_k, top_p)
        for row, p in zip(rows, probs, strict=True):
            tokens[row] = torch.multinomial(p, num_samples=1, generator=generators[row]).item()
    return tokens

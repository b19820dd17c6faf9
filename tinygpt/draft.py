"""Drafts for speculative decoding: the corpus's commonest continuation of the last few characters.

A draft costs a few dictionary lookups. The model then checks several drafted characters in one
forward pass (`tinygpt.generate.stream_speculative`) and keeps each with the probability it gives
that character, so the text is still drawn exactly from the model's distribution: a good draft only
means fewer passes. On Tiny Shakespeare the shipped model keeps about 58% of these drafts at
temperature 0.8.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tinygpt.data import load_splits
from tinygpt.tokenizer import CharTokenizer, UnknownCharactersError

ORDERS = (9, 7, 5, 4, 3, 2, 1)  # context lengths tried, longest first; 65**10 keys still fit in int64


class NGramDraft:
    """For each context of n characters seen in the training text, the character that most often follows it."""

    def __init__(self, ids: torch.Tensor, vocab_size: int, orders: tuple[int, ...] = ORDERS) -> None:
        if vocab_size ** (max(orders) + 1) >= 2**63:
            raise ValueError(f"order {max(orders)} is too long for a vocabulary of {vocab_size}")
        self.vocab_size = vocab_size
        self.orders = sorted((n for n in orders if n < len(ids)), reverse=True)
        self.tables = {n: self._commonest_next(ids, n) for n in self.orders}

    @classmethod
    def from_corpus(cls, path: str | Path, tokenizer: CharTokenizer) -> NGramDraft | None:
        """The draft of a corpus's training split, or None when the corpus is missing or foreign."""
        try:
            _, train_ids, _ = load_splits(path, tokenizer)
        except (OSError, ValueError, UnknownCharactersError):
            return None
        return cls(train_ids, len(tokenizer.vocab))

    def _commonest_next(self, ids: torch.Tensor, n: int) -> dict[int, int]:
        V = self.vocab_size
        context = torch.zeros(len(ids) - n, dtype=torch.long)  # each n-character context as a base-V number
        for j in range(n):
            context = context * V + ids[j : len(ids) - n + j]
        pairs, counts = torch.unique(context * V + ids[n:], return_counts=True)
        # Sort by count, then (stably) by context: each context's commonest next character comes last.
        order = torch.argsort(counts, stable=True)
        order = order[torch.argsort(pairs[order] // V, stable=True)]
        pairs = pairs[order]
        contexts = pairs // V
        last = torch.ones_like(contexts, dtype=torch.bool)
        last[:-1] = contexts[1:] != contexts[:-1]
        return dict(zip(contexts[last].tolist(), (pairs[last] % V).tolist(), strict=True))

    def propose(self, ids: list[int], count: int) -> list[int]:
        """`count` drafted ids continuing `ids`, each from the longest context the corpus has seen."""
        ids = ids[-self.orders[0] :] if self.orders else []
        drafted = []
        for _ in range(count):
            guess = 0
            for n in self.orders:
                if len(ids) >= n:
                    key = 0
                    for i in ids[-n:]:
                        key = key * self.vocab_size + i
                    if (found := self.tables[n].get(key)) is not None:
                        guess = found
                        break
            drafted.append(guess)
            ids.append(guess)
        return drafted

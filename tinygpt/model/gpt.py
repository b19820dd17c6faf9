"""The GPT of the seed's steps 8-12: attention heads, feed-forward, blocks, and the model.

Read top to bottom: KVCache -> MultiHeadAttention (steps 8 and 9) -> FeedForward (10)
-> Block (11) -> GPT (12) with its `generate`, the seed's loop kept as the reference. Cached,
batched generation (`tinygpt.serving.generate`) passes a KVCache and each sequence's position to `forward`.
Last, how `generate` (and the cached decode loop) chooses each next character: temperature, top-k,
top-p and the draw. This module imports only torch and the config; loading, saving and the Hugging
Face Hub sit above it (`tinygpt.files.checkpoint`, `tinygpt.hub`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinygpt.model.config import GPTConfig


class KVCache:
    """Keys and values of the tokens seen so far, for `rows` sequences side by side, so each new token
    costs one position, not T. k and v are (n_layer, rows, n_head, block_size, head_size); row b of
    the batch passed to GPT.forward reads and writes row b here. `rows(a, b)` is a view of some rows.

    A cache may store keys and values more compactly than the model computes them: float16 rounds
    them; int8 (the C++ step's) scales each head's key or value at a position to -127..127 by its
    largest magnitude and keeps that scale beside it, in k_scale and v_scale (n_layer, rows, n_head,
    block_size), float32. Attention computes with them as stored.
    """

    def __init__(
        self, k: torch.Tensor, v: torch.Tensor, k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None
    ) -> None:
        self.k, self.v, self.k_scale, self.v_scale = k, v, k_scale, v_scale

    @classmethod
    def empty(cls, config: GPTConfig, rows: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> KVCache:
        shape = (config.n_layer, rows, config.n_head, config.block_size, config.head_size)
        # Zeros, not garbage: a masked position still multiplies its value by 0, and 0 * NaN is NaN.
        k, v = (torch.zeros(shape, dtype=dtype, device=device) for _ in range(2))
        if dtype != torch.int8:
            return cls(k, v)
        return cls(k, v, *(torch.zeros(shape[:-1], device=device) for _ in range(2)))

    def rows(self, start: int, stop: int) -> KVCache:
        return KVCache(*(t if t is None else t[:, start:stop] for t in (self.k, self.v, self.k_scale, self.v_scale)))

    def to(self, dtype: torch.dtype) -> KVCache:
        """The same keys and values, stored as `dtype`."""
        (k, k_scale), (v, v_scale) = (stored(loaded(t, scale), dtype) for t, scale in self._tensors())
        return KVCache(k, v, k_scale, v_scale)

    def copy_row(self, source: int, target: int) -> None:
        for t in (self.k, self.v, self.k_scale, self.v_scale):
            if t is not None:
                t[:, target] = t[:, source]

    def store(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep the keys and values k, v (B, n_head, T, head_size) of rows 0..B-1 at positions (B, T)."""
        rows = torch.arange(k.size(0), device=k.device)[:, None]
        for (cache, scales), new in zip(self._tensors(), (k, v), strict=True):
            values, scale = stored(new.transpose(1, 2), cache.dtype)  # (B, T, n_head, head_size), (B, T, n_head)
            cache[layer][rows, :, positions] = values
            if scales is not None:
                scales[layer][rows, :, positions] = scale

    def read(self, layer: int, rows: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values (rows, n_head, end, head_size) of rows 0..rows-1 at positions 0..end-1, in float32."""
        keys, values = (
            loaded(cache[layer][:rows, :, :end], None if scales is None else scales[layer][:rows, :, :end])
            for cache, scales in self._tensors()
        )
        return keys, values

    def _tensors(self) -> tuple[tuple[torch.Tensor, torch.Tensor | None], ...]:
        return (self.k, self.k_scale), (self.v, self.v_scale)


def stored(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Vectors x (..., head_size) as a cache of `dtype` keeps them: (values, None), or for int8 (values,
    scales (...)), each vector divided by its scale, its largest magnitude over 127, and rounded."""
    if dtype != torch.int8:
        return x.to(dtype), None
    # A vector of zeros would have scale 0, and 0 / 0 is NaN: the smallest float32 instead.
    scale = (x.abs().amax(-1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return (x / scale[..., None]).round().clamp(-127, 127).to(torch.int8), scale


def loaded(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Stored vectors back as float32 (see `stored`)."""
    return x.float() if scale is None else x.float() * scale[..., None]


class MultiHeadAttention(nn.Module):
    """Causal self-attention: n_head heads of size N/n_head, then a projection back to N.

    The seed's `Head` (step 8) computes, per head, softmax(mask(q k^T / sqrt(H))) v. Here every head
    is computed at once: one matmul makes all keys, queries and values, and
    `scaled_dot_product_attention` applies the causal mask and softmax for all heads together.
    Concatenating the heads (step 9) is the transpose + reshape at the end.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cached: tuple | None = None) -> torch.Tensor:
        """x (B, T, N). With `cached` = (cache, layer, positions, mask): the new keys and values go into
        the KVCache's rows 0..B-1 of this layer at positions (B, T), and each token attends to its
        sequence's cached positions that `mask` (B, 1, T, S) allows."""
        B, T, N = x.shape
        # (B, T, 3N) -> three (B, n_head, T, head_size)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, N // self.n_head).permute(2, 0, 3, 1, 4)
        if cached is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            cache, layer, positions, mask = cached
            cache.store(layer, positions, k, v)
            keys, values = (t.to(q.dtype) for t in cache.read(layer, B, mask.size(-1)))
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, N)
        return self.dropout(self.proj(y))


class FeedForward(nn.Module):
    """Position-wise MLP: N -> 4N, ReLU, 4N -> N."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.ReLU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: communicate (attention), then compute (feed-forward)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = MultiHeadAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.ffwd = FeedForward(config)

    def forward(self, x: torch.Tensor, cached: tuple | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cached)
        x = x + self.ffwd(self.ln2(x))
        return x


class GPT(nn.Module):
    """Token + position embeddings, L blocks, a final LayerNorm and a linear map to the vocabulary.

    `tinygpt.hub.TinyGPT` is this model with Hugging Face's from_pretrained, save_pretrained and
    push_to_hub.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size == 0:
            raise ValueError("config.vocab is empty: build it from the corpus first")
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)
        self.apply(self._init_weights)
        # Each residual branch adds to the stream; scale their output layers down so the
        # stream's variance does not grow with depth (GPT-2's initialisation).
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            nn.init.normal_(block.ffwd.net[2].weight, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, C), and the mean cross-entropy if targets are given.

        With a `cache` (of B rows or more), row b of idx holds the tokens at positions input_pos[b]..:
        their keys and values are stored in the cache's row b, and each also attends to the positions
        before it there. Rows may be at different positions (sequences of different lengths).
        """
        B, T = idx.shape
        steps = torch.arange(T, device=idx.device)
        positions = steps.expand(B, T) if cache is None else input_pos.to(idx.device)[:, None] + steps
        cached = None
        end = T if cache is None else int(positions.max()) + 1
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} exceeds block_size {self.config.block_size}")
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))
        if cache is not None:
            # Each token sees its own sequence's positions up to its own; the rest of the rows
            # (unused, or left by an earlier sequence) are masked out.
            mask = torch.arange(end, device=idx.device) <= positions[:, None, :, None]  # (B, 1, T, end)
        for layer, block in enumerate(self.blocks):
            if cache is not None:
                cached = (cache, layer, positions, mask)
            x = block(x, cached)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens).

        The seed's generate, kept as the reference: every step runs the whole context (cropped to
        the last block_size tokens) through the model. `tinygpt.serving.generate` gives the same tokens
        with a KV cache, much faster.
        """
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            idx = torch.cat([idx, sample_next(logits[:, -1], temperature, top_k, top_p, generator)], dim=1)
        return idx

    def configure_optimizer(self) -> torch.optim.AdamW:
        """AdamW (seed step 14), with weight decay on matrices only."""
        c = self.config
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and "embedding" not in n]
        no_decay = [p for n, p in self.named_parameters() if p.dim() < 2 or "embedding" in n]
        groups = [
            {"params": decay, "weight_decay": c.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=c.learning_rate, betas=(c.beta1, c.beta2))


# --- Choosing the next character -----------------------------------------------------------------
# Temperature, top-k and top-p (nucleus), then the draw. A token is drawn by inverse transform
# sampling from one float64 uniform of the sequence's random generator, rather than with
# torch.multinomial: the uniforms can then be drawn ahead, and a whole batch, each row with its own
# generator, sampled in a few operations instead of a call per row (`tinygpt.serving.generate.sample_rows`).


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
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
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
    logits = filter_logits((logits - logits.amax(dim=-1, keepdim=True)) / temperature, top_k, top_p)
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

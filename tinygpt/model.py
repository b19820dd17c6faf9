"""The GPT of the seed's steps 8-12: attention heads, feed-forward, blocks, and the model.

Read top to bottom: KVCache -> MultiHeadAttention (steps 8 and 9) -> FeedForward (10)
-> Block (11) -> GPT (12) with its `generate`. Cached, fast generation lives in `tinygpt.generate`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from tinygpt.config import GPTConfig
from tinygpt.hub import card_metadata
from tinygpt.sampling import sample_next


class KVCache(nn.Module):
    """Keys and values of the tokens seen so far, so each new token costs one position, not T."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_size)
        self.register_buffer("k", torch.zeros(shape), persistent=False)
        self.register_buffer("v", torch.zeros(shape), persistent=False)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v at positions pos.. and return everything cached up to them."""
        end = pos + k.size(2)
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


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
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, input_pos: int | None = None) -> torch.Tensor:
        B, T, N = x.shape
        # (B, T, 3N) -> three (B, n_head, T, head_size)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, N // self.n_head).permute(2, 0, 3, 1, 4)
        mask = None
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("call GPT.setup_cache() before decoding with input_pos")
            k, v = self.kv_cache.update(input_pos, k, v)
            if T > 1 and input_pos > 0:  # several new tokens: each sees the cache and the new ones before it
                mask = torch.ones(T, input_pos + T, dtype=torch.bool, device=x.device).tril(diagonal=input_pos)
        # A single new token may look at every cached position, so it needs no mask.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T > 1 and mask is None)
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

    def forward(self, x: torch.Tensor, input_pos: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), input_pos)
        x = x + self.ffwd(self.ln2(x))
        return x


class GPT(nn.Module, PyTorchModelHubMixin, **card_metadata()):
    """Token + position embeddings, L blocks, a final LayerNorm and a linear map to the vocabulary.

    Hugging Face's mixin adds save_pretrained(DIR), GPT.from_pretrained(DIR or USER/NAME) and
    push_to_hub(USER/NAME); the two hooks at the end route them through tinygpt.checkpoint.
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
        input_pos: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, C), and the mean cross-entropy if targets are given.

        With `input_pos` (after `setup_cache`) idx holds the tokens at positions input_pos.., and
        attention also sees the cached keys and values of the positions before them.
        """
        T = idx.size(1)
        start = input_pos or 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(pos))
        for block in self.blocks:
            x = block(x, input_pos)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    def setup_cache(self, batch_size: int = 1) -> None:
        """Give every attention layer a KV cache as long as the context (kept if it already fits)."""
        c = self.config
        weight = self.token_embedding.weight  # the cache lives where, and in the precision, the model does
        for block in self.blocks:
            cache = block.attn.kv_cache
            if cache is None or cache.k.size(0) != batch_size or cache.k.dtype != weight.dtype:
                cache = KVCache(batch_size, c.n_head, c.block_size, c.head_size)
                block.attn.kv_cache = cache.to(device=weight.device, dtype=weight.dtype)

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
        the last block_size tokens) through the model. `tinygpt.generate.stream` gives the same
        tokens with a KV cache, much faster.
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

    # PyTorchModelHubMixin hooks: atomic writes of model.safetensors, config.json (the flat GPTConfig)
    # and the model card on save; every file checked on load. (Imported here: checkpoint imports GPT.)
    def _save_pretrained(self, save_directory: Path) -> None:
        from tinygpt.checkpoint import save_model

        save_model(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **options: object) -> GPT:
        from tinygpt.checkpoint import load_model

        hub_options = ("revision", "cache_dir", "force_download", "local_files_only", "token")
        return load_model(model_id, map_location, **{k: options[k] for k in hub_options if k in options})


TinyGPT = GPT  # an alias that reads well in Hub snippets: TinyGPT.from_pretrained("USER/NAME")

"""The one place hyperparameters live. `config.json` next to the weights is this dataclass."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class GPTConfig:
    # Model shape (seed steps 5 and 12). vocab is the tokenizer's alphabet, in id order.
    vocab: str = ""
    block_size: int = 256  # T: the context length
    n_layer: int = 6  # L
    n_head: int = 4
    n_embd: int = 256  # N
    dropout: float = 0.2  # on embeddings and on each residual branch

    # Optimisation (seed step 14).
    batch_size: int = 32  # B
    max_iters: int = 2200
    learning_rate: float = 2e-3
    min_lr: float = 2e-4  # cosine decay ends here
    warmup_iters: int = 200
    weight_decay: float = 0.1  # matrices only, never biases, LayerNorms or embeddings
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    bf16: bool = True  # bfloat16 autocast for matmuls (about 2x faster on AVX-512 BF16 CPUs)

    # Bookkeeping.
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GPTConfig:
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        # Ignore keys from newer versions rather than failing to load old weights.
        return cls(**{k: v for k, v in raw.items() if k in known})

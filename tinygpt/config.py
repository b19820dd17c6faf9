"""The one place hyperparameters live. `config.json` next to the weights is this dataclass."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")  # training precision; weights are always stored in float32


@dataclass
class GPTConfig:
    # Model shape (seed steps 5 and 12). vocab is the tokenizer's alphabet, in id order.
    vocab: str = ""
    block_size: int = 256  # T: the context length
    n_layer: int = 6  # L
    n_head: int = 4
    n_embd: int = 256  # N
    dropout: float = 0.0  # on embeddings and on each residual branch (weight decay regularises better here)

    # Optimisation (seed step 14).
    batch_size: int = 32  # B
    max_iters: int = 3400
    learning_rate: float = 2e-3
    min_lr: float = 2e-4  # cosine decay ends here
    warmup_iters: int = 200
    weight_decay: float = 2.0  # matrices only, never biases, LayerNorms or embeddings
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per step: the effective batch is batch_size x grad_accum x processes
    dtype: str = "bfloat16"  # autocast matmuls to this (float16 adds a gradient scaler); bfloat16: ~1.7x on this CPU
    ema_decay: float = 0.998  # > 0: ship an exponential moving average of the weights, not the last step's

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
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be at least 1, not {self.grad_accum}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, raw: dict) -> GPTConfig:
        """A config from its JSON form: keys from newer versions are ignored, old ones translated,
        and values of the wrong type refused (TypeError) rather than failing later inside the model."""
        raw = dict(raw)
        if "bf16" in raw and "dtype" not in raw:  # config.json written before `dtype` replaced `bf16`
            raw["dtype"] = "bfloat16" if raw["bf16"] else "float32"
        kinds = {"str": (str,), "int": (int,), "float": (int, float)}
        values = {}
        for field in fields(cls):
            if field.name in raw:
                value = raw[field.name]
                if isinstance(value, bool) or not isinstance(value, kinds[field.type]):
                    raise TypeError(f"{field.name} must be of type {field.type}, not {value!r}")
                values[field.name] = value
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> GPTConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

"""The one place hyperparameters live. `config.json` next to the weights is this dataclass."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")  # training precision; weights are always stored in float32


def hyperparameter(default: object, help: str) -> Any:
    """A GPTConfig field with its meaning, which train.py shows in --help."""
    return field(default=default, metadata={"help": help})


@dataclass
class GPTConfig:
    # Model shape (seed steps 5 and 12). vocab is the tokenizer's alphabet, in id order.
    vocab: str = hyperparameter("", "the characters of the corpus, sorted: a character's id is its index")
    block_size: int = hyperparameter(256, "T: the context length, in characters")
    n_layer: int = hyperparameter(6, "L: transformer blocks")
    n_head: int = hyperparameter(4, "attention heads per block")
    n_embd: int = hyperparameter(256, "N: the width (embedding size)")
    dropout: float = hyperparameter(0.0, "on embeddings and residual branches (weight decay regularises better here)")

    # Optimisation (seed step 14).
    batch_size: int = hyperparameter(32, "B: windows per micro-batch")
    max_iters: int = hyperparameter(3400, "training steps (0: no limit; minutes ends training)")
    minutes: float = hyperparameter(0.0, "wall-clock budget (0: none); train.py also picks its preset recipe")
    learning_rate: float = hyperparameter(2e-3, "peak learning rate, after warmup")
    min_lr: float = hyperparameter(2e-4, "where the cosine decay ends")
    warmup_iters: int = hyperparameter(200, "steps of linear warmup")
    weight_decay: float = hyperparameter(2.0, "AdamW's, on matrices only (never biases, LayerNorms, embeddings)")
    beta1: float = hyperparameter(0.9, "AdamW's first-moment decay")
    beta2: float = hyperparameter(0.99, "AdamW's second-moment decay")
    grad_clip: float = hyperparameter(1.0, "clip the gradient norm to this (0: no clipping)")
    grad_accum: int = hyperparameter(1, "micro-batches per step: the batch is batch_size x grad_accum x processes")
    dtype: str = hyperparameter("bfloat16", "autocast matmuls to this; float16 adds a gradient scaler")
    ema_decay: float = hyperparameter(0.998, "> 0: ship a moving average of the weights with this decay per step")

    # Bookkeeping.
    eval_interval: int = hyperparameter(250, "steps between loss estimates (printed and logged)")
    eval_iters: int = hyperparameter(20, "batches per loss estimate")
    seed: int = hyperparameter(1337, "for the initial weights, the batches and dropout")

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
        if self.max_iters < 0 or self.minutes < 0 or not (self.max_iters or self.minutes):
            raise ValueError("training needs a limit: max_iters or minutes above 0 (and neither negative)")

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
        for spec in fields(cls):
            if spec.name in raw:
                value = raw[spec.name]
                if isinstance(value, bool) or not isinstance(value, kinds[spec.type]):
                    raise TypeError(f"{spec.name} must be of type {spec.type}, not {value!r}")
                values[spec.name] = value
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> GPTConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# Recipes for a wall-clock budget (`train.py --minutes M`), measured alone on an idle 2-core CPU
# against nanoGPT's small CPU recipe (benchmarks/train_budget.py; README, "Training in a time budget").
# Short budgets buy only cheap steps: nanoGPT's small shape in float32 (bfloat16 gains nothing at
# width 128), at a higher learning rate; at 5 minutes with twice its batch, strong weight decay and
# weight averaging. At 10 minutes a wider model with twice the context in bfloat16 wins: fewer,
# richer steps. From 30 minutes the shipped shape wins; the longest budget is the shipped recipe.
# Each row is applied over the defaults above, with no step limit.
PRESET_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "learning_rate", "min_lr",
                 "warmup_iters", "weight_decay", "ema_decay", "dtype")  # fmt: skip
# fmt: off
BUDGET_PRESETS: dict[float, tuple] = {
    # minutes: layers, heads, width, context, batch, learning rate, final lr, warmup, weight decay, averaging, dtype
    1:   (4, 4, 128,  64, 12, 5e-3, 5e-4,  30, 0.1, 0.0,   "float32"),
    5:   (4, 4, 128,  64, 24, 2e-3, 2e-4, 100, 1.0, 0.998, "float32"),
    10:  (4, 4, 192, 128, 32, 3e-3, 3e-4, 100, 1.0, 0.998, "bfloat16"),
    30:  (6, 4, 256, 256, 32, 2e-3, 2e-4, 200, 2.0, 0.998, "bfloat16"),
    120: (6, 4, 256, 256, 32, 2e-3, 2e-4, 200, 2.0, 0.998, "bfloat16"),  # the shipped recipe
}
# fmt: on


def nearest_budget(minutes: float) -> float:
    """The preset budget nearest `minutes` on a log scale (3 minutes is nearer 5 than 1)."""
    if not minutes > 0:
        raise ValueError(f"minutes must be above 0, not {minutes}")
    return min(BUDGET_PRESETS, key=lambda budget: abs(math.log(budget / minutes)))


def budget_recipe(minutes: float) -> GPTConfig:
    """The recipe to train for `minutes` of wall clock: the nearest preset, with no step limit."""
    preset = dict(zip(PRESET_FIELDS, BUDGET_PRESETS[nearest_budget(minutes)], strict=True))
    return GPTConfig(**preset, max_iters=0, minutes=minutes)

"""The corpus as tensors (seed steps 1, 4, 6) and the loss estimate used while training (step 7)."""

from __future__ import annotations

from pathlib import Path

import torch

from tinygpt.model.tokenizer import CharTokenizer

TRAIN_FRACTION = 0.9


def load_text(path: str | Path) -> str:
    """A UTF-8 file's text (a byte-order mark dropped, Windows and old Mac line endings read as \\n)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded): save it as UTF-8") from None
    if len(text) < 2:
        raise ValueError(f"{path} holds too little text to train on")
    return text


def split(ids: torch.Tensor, train_fraction: float = TRAIN_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """First 90% for training, the last 10% for validation."""
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:]


def load_splits(path: str | Path, tokenizer: CharTokenizer | None = None):
    """Read a corpus and return (tokenizer, train ids, val ids); the vocabulary comes from the text."""
    text = load_text(path)
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return (tokenizer, *split(ids))


def load_corpus(path: str | Path, block_size: int) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """`load_splits`, checked to hold at least one window of `block_size` characters in each split."""
    tokenizer, train_ids, val_ids = load_splits(path)
    shortest = min(len(train_ids), len(val_ids))
    if shortest <= block_size:
        hint = f"use --block-size {shortest - 1} or less, or more text" if shortest > 1 else "it needs more text"
        raise ValueError(
            f"{path} is too short for block_size {block_size}: its validation split (the last 10%) "
            f"has {len(val_ids)} characters; {hint}"
        )
    return tokenizer, train_ids, val_ids


def get_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """B random windows of T characters (B, T) and the characters that follow each position."""
    if len(data) <= block_size:
        raise ValueError(f"split of {len(data)} characters is too short for block_size {block_size}")
    # Draw on the CPU, whatever device holds the data, so a seed gives the same batches everywhere.
    starts = torch.randint(len(data) - block_size, (batch_size, 1), generator=generator)
    positions = (starts + torch.arange(block_size)).to(data.device)
    return data[positions], data[positions + 1]


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    splits: dict[str, torch.Tensor],
    eval_iters: int,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Mean loss over `eval_iters` random batches of each split: cheap, noisy, for progress only.

    `tinygpt.training.evaluate.validation_loss` is the exact, repeatable figure.
    """
    was_training = model.training
    model.eval()
    block_size = model.config.block_size
    out = {}
    for name, data in splits.items():
        losses = [model(*get_batch(data, batch_size, block_size, generator))[1].item() for _ in range(eval_iters)]
        out[name] = sum(losses) / len(losses)
    model.train(was_training)
    return out

"""Weights and training state on disk: safetensors for tensors, JSON for everything else. No pickle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tinygpt import hub
from tinygpt.config import GPTConfig
from tinygpt.model import GPT

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_model(model: GPT, out_dir: str | Path) -> None:
    """Write OUT/model.safetensors and OUT/config.json (hyperparameters and vocabulary)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    model.config.save(out_dir / CONFIG_FILE)


def load_model(weights_dir: str | Path = WEIGHTS_DIR, device: str = "cpu") -> GPT:
    """Build the model from config.json and load its safetensors weights, in eval mode.

    `weights_dir` is a folder, or hf://USER/NAME to fetch one from the Hugging Face Hub.
    """
    weights_dir = hub.download(weights_dir) if hub.is_hub_name(weights_dir) else Path(weights_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (weights_dir / name).is_file():
            raise FileNotFoundError(f"{weights_dir / name} not found: train a model first (python train.py)")
    model = GPT(GPTConfig.load(weights_dir / CONFIG_FILE))
    model.load_state_dict(load_file(weights_dir / WEIGHTS_FILE, device=device))
    return model.to(device).eval()


# --- Resumable training state -------------------------------------------------------------------
# The optimizer's tensors (Adam moments) and the random generators go into one safetensors file;
# the scalars (step, elapsed time, hyperparameters) into a JSON file beside it.


def save_training_state(
    path: str | Path,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    meta: dict,
) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.batches"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, path / "state.tmp")
    meta = {**meta, "config": asdict(model.config)}
    (path / "meta.tmp").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    # Rename last, so an interrupted save never leaves a half-written checkpoint behind.
    (path / "state.tmp").replace(path / "state.safetensors")
    (path / "meta.tmp").replace(path / "meta.json")


def load_training_state(
    path: str | Path, model: GPT, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict:
    """Restore what `save_training_state` wrote; returns its meta dict (step, elapsed, ...)."""
    path = Path(path)
    tensors = load_file(path / "state.safetensors")
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    generator.set_state(tensors["rng.batches"])
    torch.set_rng_state(tensors["rng.torch"])
    return training_meta(path)


def has_training_state(path: str | Path) -> bool:
    return (Path(path) / "state.safetensors").is_file() and (Path(path) / "meta.json").is_file()


def training_meta(path: str | Path) -> dict:
    """The JSON half of a training checkpoint: step, elapsed seconds and the config it was made with."""
    return json.loads((Path(path) / "meta.json").read_text())

"""Weights and training state on disk: safetensors for tensors, JSON for everything else. No pickle.

Every file is written atomically (to a temporary file, synced, then renamed over the old one), so a
crash, a kill or a full disk leaves the previous file intact, never half of a new one. Every load is
checked, and anything wrong raises one `WeightsError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from tinygpt.files import card
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
# What a weights folder shares (on the Hub); the resumable training checkpoint stays local.
SHARED_FILES = [WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, "train_log.jsonl", "loss_curve.png"]
# OWNER/NAME, optionally hf:// before and @REVISION after: a model repo on the Hugging Face Hub.
HUB_NAME = re.compile(r"(?:hf://)?(\w[\w.-]*/[\w.-]+)(?:@([\w./-]+))?")


class WeightsError(ValueError):
    """Weights or a checkpoint that cannot be used: missing, unreadable, or not what their config says."""


# --- Writing --------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Make `path` with `write(temporary path)`, then rename it into place: readers see the old file or
    the new one, never a mix. If anything fails (disk full, Ctrl-C) the old file is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename, or a power cut could leave an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            message = f"could not write {path} ({err.strerror or err}); the old file is unchanged"
            raise OSError(err.errno, message) from err
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: stored with the tensors, checked when they load."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"format": "pt", **(metadata or {}), "sha256": tensor_digest(tensors)}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))


def save_model(model: GPT, out_dir: str | Path, results: dict | None = None) -> None:
    """Write OUT/model.safetensors, OUT/config.json (hyperparameters and vocabulary) and OUT/README.md,
    the Hugging Face model card (with `results`, e.g. val_loss, if given).

    This is the layout of TinyGPT.save_pretrained (tinygpt.hub), which calls this function.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tensors(out_dir / WEIGHTS_FILE, model.state_dict())
    write_text(out_dir / CONFIG_FILE, model.config.to_json())
    card_path = out_dir / CARD_FILE
    if not card_path.exists() or card.is_model_card(card_path.read_text(encoding="utf-8", errors="replace")):
        write_text(card_path, card.model_card(model.config, results))  # never overwrite someone else's README


# --- Reading --------------------------------------------------------------------------------------


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file, on the CPU, and its metadata; WeightsError if unusable."""
    if not path.is_file():
        raise WeightsError(f"{path} not found")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file (truncated or corrupted?): {err}") from None
    if "sha256" in metadata and metadata["sha256"] != tensor_digest(tensors):
        raise WeightsError(f"{path} is corrupted: its tensors do not match the checksum saved with them")
    return tensors, metadata


def read_config(path: Path) -> GPTConfig:
    if not path.is_file():
        raise WeightsError(f"{path} not found: train a model first (python train.py)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not valid JSON: {err}") from None
    except OSError as err:
        raise WeightsError(f"{path} cannot be read: {err.strerror or err}") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path} should hold a JSON object of hyperparameters, not {type(raw).__name__}")
    try:
        config = GPTConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: {err}") from None
    if not config.vocab:
        raise WeightsError(f"{path} has no vocab: it is not a Tiny_GPT config")
    return config


def _names(keys: set[str]) -> str:
    shown = sorted(keys)[:3]
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def check_state(path: Path, tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """The file's tensors must be exactly the model's, shape for shape."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if missing := expected.keys() - tensors.keys():
        raise WeightsError(f"{path} lacks {len(missing)} tensor(s) the config calls for: {_names(missing)}")
    if extra := tensors.keys() - expected.keys():
        raise WeightsError(f"{path} has {len(extra)} tensor(s) this model does not have: {_names(extra)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise WeightsError(
                f"{path}: {name} does not fit the config: config says {list(shape)}, "
                f"tensor has {list(tensors[name].shape)}"
            )


def resolve(
    name: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A weights folder: `name` itself if it is a folder, else a Hub model repo OWNER/NAME (also written
    hf://OWNER/NAME@REVISION), fetched into the Hugging Face cache (or found there when offline)."""
    if Path(name).is_dir():
        return Path(name)
    if Path(name).exists():
        raise WeightsError(f"{name} is a file: give the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    match = HUB_NAME.fullmatch(str(name))
    if not match:
        raise WeightsError(f"{name} not found: no such folder")
    from huggingface_hub import snapshot_download  # imported here: only needed for Hub names

    repo_id, revision = match.group(1), revision or match.group(2)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=SHARED_FILES,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
    except Exception as err:  # offline, unknown repo, no access: one clear line for all of them
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"{name} not found: not a folder here, and the Hugging Face Hub could not provide it ({reason})"
        ) from None
    return Path(folder)


def load_model(
    name: str | Path = WEIGHTS_DIR, device: str = "cpu", model_class: type[GPT] = GPT, **hub_options: Any
) -> GPT:
    """The model in a weights folder or Hub repo (see `resolve`), checked and in eval mode.

    Raises WeightsError, naming the file, if anything is missing, unreadable or inconsistent.
    TinyGPT.from_pretrained(name) (tinygpt.hub) is the same with the Hugging Face API.
    """
    folder = resolve(name, **hub_options)
    config = read_config(folder / CONFIG_FILE)
    try:
        model = model_class(config)
    except (ValueError, TypeError, RuntimeError) as err:
        raise WeightsError(f"{folder / CONFIG_FILE}: cannot build a model from it: {err}") from None
    tensors, _ = read_tensors(folder / WEIGHTS_FILE)
    check_state(folder / WEIGHTS_FILE, tensors, model)
    model.load_state_dict(tensors)
    return model.to(device).eval()


# --- Resumable training state ---------------------------------------------------------------------
# One safetensors file: the weights, the Adam moments and the random generators as tensors, and the
# scalars (step, elapsed time, config, gradient scaler) as JSON in its metadata. One file, one rename:
# a checkpoint is always complete.

RNG_STATES = ("rng.batches", "rng.torch")  # the batch sampler's generator and torch's global one
OPTIMIZER_KEY = re.compile(r"optim\.(\d+)\.(\w+)")  # optim.INDEX.NAME: one tensor of a parameter's state


def save_training_state(
    path: str | Path,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    meta: dict,
    averaged: GPT | None = None,
) -> None:
    """Everything needed to continue training exactly: weights, Adam moments, random generators,
    the weight average if there is one, and `meta` (step, elapsed seconds, ...) with the config."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if averaged is not None:
        tensors |= {f"average.{k}": v for k, v in averaged.state_dict().items()}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    tensors["rng.batches"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on the GPU draws from here
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {**meta, "config": json.loads(model.config.to_json())}
    write_tensors(path, tensors, {"meta": json.dumps(meta, ensure_ascii=False)})


def _read_training_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    legacy = path.with_suffix("")  # checkpoint/{state.safetensors,meta.json}: the two-file format before
    if not path.is_file() and (legacy / "meta.json").is_file():
        try:
            meta_text = (legacy / "meta.json").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise WeightsError(f"{legacy / 'meta.json'} cannot be read: {err}") from None
        return read_tensors(legacy / "state.safetensors")[0], _parse_meta(legacy / "meta.json", meta_text)
    tensors, metadata = read_tensors(path)
    if "meta" not in metadata:
        raise WeightsError(f"{path} is not a training checkpoint (no step or config in its metadata)")
    return tensors, _parse_meta(path, metadata["meta"])


def _parse_meta(path: Path, text: str) -> dict:
    """The checkpoint's scalars, checked: a JSON object with a step, a config and the elapsed seconds."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: its training state (step, config) is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: its training state should be a JSON object, not {type(meta).__name__}")
    step, elapsed = meta.get("step"), meta.setdefault("elapsed", 0.0)  # without it, the clock restarts at 0
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise WeightsError(f"{path}: its training state has no valid step (found {step!r})")
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not elapsed >= 0:
        raise WeightsError(f"{path}: its training state has no valid elapsed time (found {elapsed!r})")
    if not isinstance(meta.get("config"), dict):
        raise WeightsError(f"{path}: its training state has no config")
    try:
        GPTConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: the config in its training state is invalid: {err}") from None
    if not isinstance(meta.get("scaler", {}), dict):
        raise WeightsError(f"{path}: the gradient scaler in its training state is not a JSON object")
    return meta


def _check_training_tensors(
    path: Path, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, models: dict[str, GPT]
) -> None:
    """Every tensor `load_training_state` restores is there, with the shape and dtype it must have:
    checked before anything is restored, so a bad checkpoint changes nothing."""
    for prefix, model in models.items():
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        check_state(path, state, model)
        for name, expected in model.state_dict().items():
            if state[name].dtype != expected.dtype:
                raise WeightsError(f"{path}: {prefix}{name} is {state[name].dtype}, not {expected.dtype}")
    for name in RNG_STATES:
        if name not in tensors:
            raise WeightsError(f"{path} lacks {name}, the state of a random generator")
        try:
            torch.Generator().set_state(tensors[name])  # a scratch generator: validates, changes nothing
        except (RuntimeError, TypeError) as err:
            raise WeightsError(f"{path}: {name} is not a random generator's state ({err})") from None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names: dict[int, set[str]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        match = OPTIMIZER_KEY.fullmatch(key)
        if not match or int(match.group(1)) >= len(params):
            raise WeightsError(f"{path}: {key} belongs to no parameter of this model's optimizer")
        idx, name = int(match.group(1)), match.group(2)
        param = params[idx]
        if value.dim() and (value.shape != param.shape or value.dtype != param.dtype):
            raise WeightsError(
                f"{path}: {key} is {value.dtype} {list(value.shape)}, its parameter {param.dtype} {list(param.shape)}"
            )
        names.setdefault(idx, set()).add(name)
    if names and (len(names) != len(params) or len({frozenset(n) for n in names.values()}) != 1):
        raise WeightsError(f"{path}: the optimizer state is incomplete (some parameters lack some of its tensors)")


def load_training_state(
    path: str | Path,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    averaged: GPT | None = None,
) -> dict:
    """Restore what `save_training_state` wrote; returns its meta dict (step, elapsed, ...)."""
    path = Path(path)
    tensors, meta = _read_training_state(path)
    models = {prefix: m for prefix, m in (("model.", model), ("average.", averaged)) if m is not None}
    _check_training_tensors(path, tensors, optimizer, models)
    for prefix, target in models.items():
        target.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
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
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


def has_training_state(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() or (path.with_suffix("") / "meta.json").is_file()


def training_meta(path: str | Path) -> dict:
    """The scalars of a training checkpoint: step, elapsed seconds and the config it was made with."""
    return _read_training_state(Path(path))[1]

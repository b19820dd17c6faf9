"""How a forward pass over cached positions runs: the backends of the decode loop (`tinygpt.serving.generate`).

A backend does one thing: run tokens (B, T) of B sequences, row b at positions input_pos[b].., store
their keys and values in rows 0..B-1 of a KVCache of its `cache_dtype`, and return the logits
(B, T, vocab). The decode loop (prefill, steps, the context window, sampling, batching) is written
once, above them.

  torch - the PyTorch model in float32, with a float32 cache: the reference.
  int8  - the PyTorch model with int8 weights (`tinygpt.files.quantize`): a different, slightly rounded
          function (`python -m tinygpt.evaluate --precision int8` scores it); faster than float32 on PyTorch.
  cpp   - float32 weights and arithmetic with an int8 cache, each pass (a step, a prompt, the
          window's re-prefill) one C++ call (`csrc/decode.cpp`) instead of ~150 PyTorch operations.
          The same function as the PyTorch model given an int8 cache (`TorchBackend(model,
          cache_dtype=torch.int8)`, its reference in the tests). The int8 cache (each head's key or
          value at a position scaled to -127..127, its scale kept beside it) is about a quarter of
          the bytes of a float32 one (half of float16's) for attention to read from memory, much of
          a crowded step; `python -m tinygpt.evaluate --cache-dtype int8` scores it (docs/speed.md).
          With `threads` > 1 a step of 8 or more sequences is cut into that many parts of
          about equal work, and a long prompt into parts of its positions, one thread each.
          Compiled on first use (tens of seconds: benchmarks/cold_start.py; cached by
          torch.utils.cpp_extension, under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions).
          Fastest where it builds.
  auto  - cpp where it can be built, else torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch

from tinygpt.files.quantize import quantize_int8
from tinygpt.model.gpt import GPT, KVCache

BACKENDS = ("auto", "torch", "int8", "cpp")
SOURCE = Path(__file__).parent / "csrc" / "decode.cpp"
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd"]  # simd pragmas, no threads


class Backend(Protocol):
    name: str
    model: GPT
    cache_dtype: torch.dtype

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, cache: KVCache) -> torch.Tensor: ...


class TorchBackend:
    """The PyTorch model (float32, or int8 once quantised), with a cache of `cache_dtype`."""

    def __init__(self, model: GPT, name: str = "torch", cache_dtype: torch.dtype = torch.float32) -> None:
        self.model, self.name, self.cache_dtype = model.eval(), name, cache_dtype

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.model(tokens, cache=cache, input_pos=input_pos)[0]


@contextlib.contextmanager
def build_lock(build_dir: Path) -> Iterator[None]:
    """Hold the C++ step's build folder for this process. PyTorch's own lock there is a plain file: a
    build killed while holding it (Ctrl-C just after `python app.py` starts) leaves it behind, and every
    later build then waits for it forever. This lock is the operating system's (flock), which goes
    with its process, so its holder knows that a PyTorch lock in the folder belongs to no one."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "tinygpt.lock", "w") as handle:
        if fcntl is not None:  # POSIX; elsewhere PyTorch's own lock only
            fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process builds
            if (build_dir / "lock").exists():
                (build_dir / "lock").unlink()
                print("tinygpt: removed a lock left by a build of the C++ step that did not finish", file=sys.stderr)
        yield


@functools.cache
def extension() -> object | None:
    """The compiled C++ module, or None (and one line on stderr) where it cannot be built."""
    if shutil.which("ninja") is None:  # pip's ninja (requirements.txt) sits beside this interpreter
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        from torch.utils.cpp_extension import get_default_build_root, load

        build_dir = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "tinygpt_decode"
        with build_lock(build_dir):
            return load("tinygpt_decode", [str(SOURCE)], extra_cflags=FLAGS, build_directory=str(build_dir))
    except Exception as err:  # no compiler, no ninja, an unusual platform: PyTorch still works
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"tinygpt: the C++ decode step could not be built, decoding with PyTorch ({reason})", file=sys.stderr)
        return None


class CppBackend:
    """Every forward pass as one C++ call over the float32 weights and an int8 cache.

    `threads`: how many threads a pass may share: a step of 8 or more sequences is cut by sequences,
    a prompt of 8 or more positions by positions. More than 1 pays only where PyTorch's idle OpenMP
    workers sleep (OMP_WAIT_POLICY=PASSIVE, as app.py sets): by default they spin for a while after
    each PyTorch operation of the decode loop, on the very core the step's second thread needs, and
    the split step is then slower.
    """

    name = "cpp"
    cache_dtype = torch.int8

    def __init__(self, model: GPT, threads: int = 1) -> None:
        module = extension()
        if module is None:
            raise RuntimeError("the C++ decode step is not available (it could not be built)")
        if model.token_embedding.weight.device.type != "cpu" or model.token_embedding.weight.dtype != torch.float32:
            raise ValueError("the C++ decode step runs float32 weights on the CPU")
        self.model, self.threads = model.eval(), threads
        self.decoder = module.Decoder(dict(model.state_dict()), model.config.n_head, threads)

    def __call__(self, tokens: torch.Tensor, input_pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        return self.decoder.step(
            tokens.contiguous(), input_pos.contiguous(), cache.k, cache.v, cache.k_scale, cache.v_scale
        )


def load_backend(model: GPT, name: str = "auto", threads: int = 1) -> Backend:
    """`model` (in place) behind the backend called `name` (see the module doc); `threads` is the C++
    step's (see CppBackend). Raises ValueError for an unknown name, RuntimeError when "cpp" cannot
    be built; "auto" never fails."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    on_cpu = model.token_embedding.weight.device.type == "cpu"
    if name == "cpp" or (name == "auto" and on_cpu and extension() is not None):
        return CppBackend(model, threads)
    if name == "int8":
        return TorchBackend(quantize_int8(model), "int8")
    return TorchBackend(model)

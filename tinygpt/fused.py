"""A C++ decode step for generating one sequence (`csrc/decode.cpp`), compiled on first use.

At batch 1 a cached forward pass is ~150 small PyTorch operations, and dispatching them costs more
than their arithmetic. `FusedGPT` runs each short cached step (one sequence, up to MAX_ROWS new
tokens: a decode step, or a speculative check) as one C++ call over the model's own float32 weights
and KV cache; everything else (prefill, batches, training) goes through the PyTorch model unchanged.
The C++ loops compute the same float32 function (tests compare the logits to float32 rounding).

Compiling needs a C++ compiler and takes ~40 s once; the build is cached (torch.utils.cpp_extension,
in ~/.cache/torch_extensions). Where it cannot be built, `extension()` returns None and the caller
stays on PyTorch.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn

from tinygpt.model import GPT

SOURCE = Path(__file__).parent / "csrc" / "decode.cpp"
MAX_ROWS = 8  # new tokens per C++ step; longer inputs (prefill) are faster as PyTorch's batched matmuls
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"]


@functools.cache
def extension() -> object | None:
    """The compiled module, or None (and one line on stderr) where it cannot be built."""
    if shutil.which("ninja") is None:  # pip's ninja (requirements.txt) sits beside this interpreter
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        from torch.utils.cpp_extension import load

        return load("tinygpt_decode", [str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"])
    except Exception as err:  # no compiler, no ninja, an unusual platform: PyTorch still works
        print(f"tinygpt: the C++ decode step could not be built, decoding with PyTorch ({err})", file=sys.stderr)
        return None


def _weights(model: GPT) -> list[torch.Tensor]:
    """The model's tensors in the order decode.cpp reads them."""
    tensors = [model.token_embedding.weight, model.position_embedding.weight]
    for block in model.blocks:
        attn, fc1, fc2 = block.attn, block.ffwd.net[0], block.ffwd.net[2]
        tensors += [block.ln1.weight, block.ln1.bias, attn.qkv.weight, attn.proj.weight, attn.proj.bias,
                    block.ln2.weight, block.ln2.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias]  # fmt: skip
    tensors += [model.ln_f.weight, model.ln_f.bias, model.lm_head.weight, model.lm_head.bias]
    return [t.detach().float().contiguous() for t in tensors]


class FusedGPT(nn.Module):
    """A float32 CPU GPT whose short cached steps for one sequence run as one C++ call.

    It offers what decoding uses (config, setup_cache, forward, num_params), so `tinygpt.generate`
    takes it in place of the GPT it wraps.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        module = extension()
        if module is None:
            raise RuntimeError("the C++ decode step is not available")
        self.model = model.eval()
        self.config = model.config
        self.decoder = module.Decoder(_weights(model), model.config.n_head)
        self.batch_size = 0  # of the caches the decoder was given

    def num_params(self) -> int:
        return self.model.num_params()

    def setup_cache(self, batch_size: int = 1) -> None:
        self.model.setup_cache(batch_size)
        self.batch_size = batch_size
        if batch_size == 1:
            blocks = self.model.blocks
            self.decoder.use_cache([b.attn.kv_cache.k for b in blocks], [b.attn.kv_cache.v for b in blocks])

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, input_pos: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape
        if input_pos is not None and targets is None and B == 1 == self.batch_size and T <= MAX_ROWS:
            return self.decoder.step(idx[0], input_pos)[None], None
        return self.model(idx, targets, input_pos)

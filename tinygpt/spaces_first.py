"""On a ZeroGPU Space, `spaces` is imported before anything else touches CUDA.

ZeroGPU's package patches PyTorch's CUDA handling when it is imported; imported after torch has set
CUDA up, it refuses to start ("CUDA has been initialized before importing the spaces package"). The
page's entry point calls `import_spaces_first()` before it imports torch or Gradio. Nothing here
imports either, so this module stays cheap to import first.
"""

from __future__ import annotations

import importlib
import os


def zero_gpu() -> bool:
    """Whether this is a ZeroGPU Space (the Hub sets SPACES_ZERO_GPU there)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("", "0", "false")


def import_spaces_first() -> bool:
    """Import `spaces` now if this is a ZeroGPU Space; returns whether it did."""
    if not zero_gpu():
        return False
    importlib.import_module("spaces")  # the staged zero-gpu requirements install it
    return True

"""Weight-only int8 quantisation, applied once at load (in the style of gpt-fast's quantize.py).

Decoding one character reads every weight once, so at batch 1 PyTorch is bound by memory traffic
and dispatch, not arithmetic: a quarter of the bytes per weight is the speed-up. The validation
loss moves by less than 0.001 (`python -m tinygpt.evaluate --precision int8`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tinygpt.model.gpt import GPT, stored


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights and one scale per output row.

    The matmul runs on bfloat16 activations (PyTorch's int8 weight kernel is fast only for those);
    input and output stay float32, like the rest of the model.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        # Each row scaled to -127..127 by its largest magnitude, as an int8 KV cache stores a vector.
        weight, scales = stored(linear.weight.detach().float(), torch.int8)
        # Still parameters (frozen), so num_params() counts the same model.
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.size(-1)).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales).float().view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def quantize_int8(model: GPT) -> GPT:
    """The same model, in eval mode, with every Linear layer replaced by an Int8Linear (CPU only). In place."""
    if model.token_embedding.weight.device.type != "cpu":
        raise ValueError("int8 weights run on the CPU only")
    if model.config.n_embd % 16:  # PyTorch's int8 kernel reads rows of 16; other widths crash it
        raise ValueError(f"int8 weights need a width (n_embd) that is a multiple of 16, not {model.config.n_embd}")
    model.eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model

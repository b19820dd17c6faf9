"""The Write tab's "inside the model" view: each new character coloured by the probability the model
gave it, and the ten candidates it weighed at one position. Computed from the logits a generation
kept (a Trace) only when the view is shown."""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
import torch

VISIBLE = {"\n": "⏎", " ": "␣", "\t": "⇥"}  # how whitespace candidates are shown in the chart


@dataclass
class Trace:
    """What one generation produced, kept for the "inside the model" view."""

    prompt: str
    vocab: str
    chars: list[str] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # (n, V) blocks: the model's logits per new character

    def add(self, chars: list[str], logits: list[torch.Tensor]) -> None:
        """New characters and the (V,) logits of each. They are copied into one block: the engine's
        rows are views of its whole batch's logits, which the session would otherwise keep alive."""
        self.chars += chars
        self.logits.append(torch.stack(logits))


def inside_view(trace: Trace | None, position: int | None = None) -> tuple[list, dict[str, float]]:
    """The new text coloured by the probability the model gave each character, and the 10 likeliest
    candidates the model weighed at one position (default: the last character)."""
    if trace is None or not trace.chars:
        return [], {}
    probs = torch.cat(trace.logits).float().softmax(dim=-1)  # computed only when the view is shown
    chosen = probs.gather(1, torch.tensor([[trace.vocab.index(c)] for c in trace.chars]))[:, 0].tolist()
    # HighlightedText colours scores in [-1, 1] by sign and size: 2p - 1 puts p = 0.5 at no colour.
    spans = [(trace.prompt, None), *((c, round(2 * p - 1, 3)) for c, p in zip(trace.chars, chosen, strict=True))]
    position = len(trace.chars) - 1 if position is None else min(max(position, 0), len(trace.chars) - 1)
    top = probs[position].topk(min(10, probs.size(1)))
    shown = [VISIBLE.get(trace.vocab[i], trace.vocab[i]) for i in top.indices.tolist()]
    return spans, dict(zip(shown, top.values.tolist(), strict=True))


def candidates_at(trace: Trace | None, evt: gr.SelectData) -> dict[str, float]:
    """The top-10 chart for the character clicked in the confidence view (span 0 is the prompt)."""
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return inside_view(trace, index - 1)[1] if index else gr.skip()

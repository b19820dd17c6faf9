"""Tiny_GPT: a character-level GPT trained on Tiny Shakespeare, small enough to read in an afternoon.

    from tinygpt import complete_text, load_model

    model = load_model("weights")  # a folder, or USER/NAME on the Hugging Face Hub
    print(complete_text(model, "ROMEO:\\n", 200, temperature=0.8, seed=1))

The package's folders are its layers, each importing only those before it: model (the GPT itself),
files (checkpoints, model cards, int8 weights), serving (decoding, the C++ step, batching), training,
hub (deploying) and web (the Gradio page).
"""

from tinygpt.files.checkpoint import load_model
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving.generate import complete_text

__all__ = ["GPT", "CharTokenizer", "GPTConfig", "complete_text", "load_model"]

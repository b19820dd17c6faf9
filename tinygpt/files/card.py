"""The model card: the README.md of a weights folder, with the Hugging Face Hub's metadata."""

from __future__ import annotations

from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.model.config import GPTConfig

DATASET = "karpathy/tiny_shakespeare"
LIBRARY_NAME = "tinygpt"


def card_metadata() -> dict:
    """The model card's metadata, also given to PyTorchModelHubMixin by tinygpt.hub.TinyGPT.

    A new dict each time: the mixin appends its own tags to the list it is given.
    """
    tags = ["text-generation", "character-level", "shakespeare", "pytorch"]
    return dict(library_name=LIBRARY_NAME, license="mit", pipeline_tag="text-generation", tags=tags)


def is_model_card(text: str) -> bool:
    """Whether a README.md is a card this module wrote (and so may be rewritten)."""
    return text.startswith("---\n") and f"library_name: {LIBRARY_NAME}\n" in text


def model_card(config: GPTConfig, results: dict | None = None) -> str:
    """The README.md of a weights folder: Hub metadata (YAML front matter) and a short description.

    `results` is a training summary: val_loss and bpc (tinygpt.evaluate), and optionally data (the
    corpus file's name), params, steps, elapsed_s and hardware.
    """
    from huggingface_hub import EvalResult, ModelCardData

    results = results or {}
    shakespeare = results.get("data", DEFAULT_DATA.name) == DEFAULT_DATA.name
    corpus = "Tiny Shakespeare" if shakespeare else f"`{results['data']}`"
    evals = None
    if "val_loss" in results:
        evals = [
            EvalResult(
                task_type="text-generation",
                dataset_type=DATASET if shakespeare else "text",
                dataset_name=corpus.strip("`"),
                dataset_split="validation",
                metric_type="loss",
                metric_value=results["val_loss"],
                metric_name="validation loss (nats per character)",
            )
        ]
    data = ModelCardData(**card_metadata(), datasets=[DATASET] if shakespeare else None, model_name="Tiny_GPT",
                         eval_results=evals)  # fmt: skip
    c = config
    lines = [
        "---", data.to_yaml(), "---", "",
        "# Tiny_GPT", "",
        f"A character-level GPT ({c.n_layer} layers, {c.n_head} heads, width {c.n_embd}, context {c.block_size}, "
        f"{len(c.vocab)}-character vocabulary) trained from scratch on {corpus}. Give it the start of some text "
        "and it writes the next characters, one at a time.", "",
        "```python",
        "from tinygpt.hub import TinyGPT  # from the Tiny_GPT repository",
        "",
        'model = TinyGPT.from_pretrained("USER/NAME")  # this repo, or a local folder',
        "```", "",
        "or `python app.py --model USER/NAME` for the Gradio demo. The weights are `model.safetensors`; "
        "`config.json` holds every hyperparameter and the vocabulary.", "",
    ]  # fmt: skip
    if evals:
        lines += ["## Results", ""]
        lines += [f"- validation loss: {results['val_loss']} nats per character ({results['bpc']} bits per "
                  "character) on the last 10% of the corpus, from `python -m tinygpt.evaluate`"]  # fmt: skip
        if "params" in results:
            lines += [f"- parameters: {results['params']:,}"]
        if "steps" in results:
            where = f" on {results['hardware']}" if "hardware" in results else ""
            lines += [f"- training: {results['steps']} steps of {c.batch_size * c.grad_accum} x {c.block_size} "
                      f"characters, {c.dtype}, {results.get('elapsed_s', 0):.0f} s{where}"]  # fmt: skip
        lines += [""]
    return "\n".join(lines)

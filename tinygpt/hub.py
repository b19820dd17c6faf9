"""Share models through the Hugging Face Hub.

    python train.py --push-to-hub USER/NAME           # train, then upload OUT as a model repo
    python -m tinygpt.hub push weights USER/NAME      # upload a weights folder that already exists
    python app.py --model USER/NAME                   # any --model option also takes a Hub repo
    python -m tinygpt.hub space USER/NAME             # deploy the demo as a Space (tinygpt.space)

GPT is a huggingface_hub PyTorchModelHubMixin, so GPT.from_pretrained, save_pretrained and
push_to_hub work too. Nothing here runs unless asked: by default everything reads local files only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinygpt.config import GPTConfig
from tinygpt.data import DEFAULT_DATA

# What a weights folder shares; the resumable training checkpoint stays local.
SHARED_FILES = ["model.safetensors", "config.json", "README.md", "train_log.jsonl", "loss_curve.png"]
DATASET = "karpathy/tiny_shakespeare"
LIBRARY_NAME = "tinygpt"


def card_metadata() -> dict:
    """The model card's metadata, also given to PyTorchModelHubMixin by tinygpt.model.GPT.

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
        "from tinygpt.model import GPT  # from the Tiny_GPT repository",
        "",
        'model = GPT.from_pretrained("USER/NAME")  # this repo, or a local folder',
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


def push(weights_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a weights folder to a model repo (created if missing); returns the repo's URL.

    The folder is loaded first, so broken weights are never published.
    """
    from huggingface_hub import HfApi

    from tinygpt.checkpoint import load_model  # imported here: checkpoint imports this module

    load_model(weights_dir)  # raises WeightsError naming the problem
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=weights_dir, allow_patterns=SHARED_FILES,
                      commit_message="Upload Tiny_GPT weights")  # fmt: skip
    return str(url)


def main(argv: list[str] | None = None) -> int:
    from tinygpt import space  # imported here, as in push: it imports checkpoint, which imports this module
    from tinygpt.checkpoint import WEIGHTS_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    push_cmd = commands.add_parser("push", help="upload a weights folder (needs `hf auth login` or HF_TOKEN)")
    push_cmd.add_argument("weights", type=Path)
    push_cmd.add_argument("repo_id", help="USER/NAME")
    push_cmd.add_argument("--private", action="store_true")
    space_cmd = commands.add_parser("space", help="deploy the demo as a Gradio Space (needs a token, as push)")
    space_cmd.add_argument("repo_id", help="USER/NAME of the Space")
    space_cmd.add_argument("--private", action="store_true", help="a private Space (when it is created)")
    space_cmd.add_argument("--weights", type=Path, default=WEIGHTS_DIR, metavar="DIR",
                           help="the weights folder the page serves (default: the shipped weights/)")  # fmt: skip
    space_cmd.add_argument("--hardware", choices=sorted(space.HARDWARE), default="cpu",
                           help="cpu: CPU basic; zero-gpu: ZeroGPU, where the Train tab trains on the GPU")  # fmt: skip
    space_cmd.add_argument("--stage", type=Path, metavar="DIR",
                           help="only write the Space's folder to DIR and list it; nothing is uploaded")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.command == "push":
            print(push(args.weights, args.repo_id, args.private))
        elif args.stage:
            space.check_name(args.repo_id)
            files = space.stage(args.stage, args.repo_id, args.weights, args.hardware)
            for name in files:
                print(f"{(args.stage / name).stat().st_size:>12,}  {name}")
            print(f"{sum((args.stage / name).stat().st_size for name in files):>12,}  total, in {args.stage}")
        else:
            print(space.upload(args.repo_id, args.private, args.weights, args.hardware))
    except Exception as err:  # network, auth and broken weights all end up here; say what happened
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

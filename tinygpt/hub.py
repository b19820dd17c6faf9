"""Share weights through the Hugging Face Hub.

    python -m tinygpt.hub push weights USER/NAME      # upload a weights folder as a model repo
    python app.py --weights hf://USER/NAME            # any --weights option also takes hf:// names

Nothing here runs unless asked: by default the app and the tools read local files only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HF_PREFIX = "hf://"
# What a weights folder holds besides the resumable checkpoint, which stays local.
SHARED_FILES = ["model.safetensors", "config.json", "train_log.jsonl", "loss_curve.png"]


def is_hub_name(weights: str | Path) -> bool:
    return str(weights).startswith(HF_PREFIX)


def download(weights: str) -> Path:
    """hf://USER/NAME[@REVISION] -> local folder with model.safetensors and config.json (cached)."""
    from huggingface_hub import snapshot_download  # imported here: only needed when asked for

    repo_id, _, revision = weights.removeprefix(HF_PREFIX).partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=SHARED_FILES))
    except Exception as err:  # offline, unknown repo, no access: one clear message for all of them
        raise FileNotFoundError(f"could not fetch {weights} from the Hugging Face Hub: {err}") from err


def push(weights_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a weights folder to a model repo (created if missing); returns the repo's URL."""
    from huggingface_hub import HfApi

    weights_dir = Path(weights_dir)
    if not (weights_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{weights_dir / 'model.safetensors'} not found")
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=weights_dir, allow_patterns=SHARED_FILES,
                      commit_message="Upload Tiny_GPT weights")  # fmt: skip
    return str(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    push_cmd = commands.add_parser("push", help="upload a weights folder (needs `hf auth login` or HF_TOKEN)")
    push_cmd.add_argument("weights", type=Path)
    push_cmd.add_argument("repo_id", help="USER/NAME")
    push_cmd.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(push(args.weights, args.repo_id, args.private))
    except Exception as err:  # network, auth and missing files all end up here; say what happened
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

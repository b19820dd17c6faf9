"""Share models through the Hugging Face Hub.

    python train.py --push-to-hub USER/NAME           # train, then upload OUT as a model repo
    python -m tinygpt.hub push weights USER/NAME      # upload a weights folder that already exists
    python app.py --model USER/NAME                   # any --model option also takes a Hub repo
    python -m tinygpt.hub space USER/NAME             # deploy the demo as a Space (tinygpt.hub.space)

Exit status: 0 done, 2 nothing was published (a bad name, broken weights, no token, no network), 3 the
Space was uploaded but did not come up (its build or start failed, or it took longer than --wait-minutes).

TinyGPT is the model with huggingface_hub's PyTorchModelHubMixin, so TinyGPT.from_pretrained,
save_pretrained and push_to_hub work too. Nothing here runs unless asked: by default everything
reads local files only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from huggingface_hub import PyTorchModelHubMixin

from tinygpt.files.card import card_metadata
from tinygpt.files.checkpoint import SHARED_FILES, WEIGHTS_DIR, load_model, save_model
from tinygpt.hub import space
from tinygpt.model.gpt import GPT


class TinyGPT(GPT, PyTorchModelHubMixin, **card_metadata()):
    """GPT with Hugging Face's save_pretrained(DIR), TinyGPT.from_pretrained(DIR or USER/NAME) and
    push_to_hub(USER/NAME). The two hooks route them through tinygpt.checkpoint: atomic writes of
    model.safetensors, config.json (the flat GPTConfig) and the model card on save; every file
    checked on load."""

    def _save_pretrained(self, save_directory: Path) -> None:
        save_model(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **options: Any) -> TinyGPT:
        hub_options = ("revision", "cache_dir", "force_download", "local_files_only", "token")
        options = {k: options[k] for k in hub_options if k in options}
        return load_model(model_id, map_location, model_class=cls, **options)


def push(weights_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a weights folder to a model repo (created if missing); returns the repo's URL.

    The folder is loaded first, so broken weights are never published.
    """
    from huggingface_hub import HfApi

    load_model(weights_dir)  # raises WeightsError naming the problem
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
    space_cmd = commands.add_parser("space", help="deploy the demo as a Gradio Space (needs a token, as push)")
    space_cmd.add_argument("repo_id", help="USER/NAME of the Space")
    space_cmd.add_argument("--private", action="store_true", help="a private Space (when it is created)")
    space_cmd.add_argument("--weights", type=Path, default=WEIGHTS_DIR, metavar="DIR",
                           help="the weights folder the page serves (default: the shipped weights/)")  # fmt: skip
    space_cmd.add_argument("--hardware", choices=sorted(space.HARDWARE), default=space.DEFAULT_HARDWARE,
                           help="zero-gpu (default; free accounts may host it): ZeroGPU, where the Train tab trains "
                                "on the GPU; cpu: CPU basic (a paid plan creates it)")  # fmt: skip
    space_cmd.add_argument("--no-wait", action="store_true",
                           help="print the Space's URL once uploaded, without waiting until it runs")  # fmt: skip
    space_cmd.add_argument("--wait-minutes", type=float, default=30, metavar="N",
                           help="how long to wait for the Space to build and start (default: 30)")  # fmt: skip
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
            url, commit = space.upload(args.repo_id, args.private, args.weights, args.hardware)
            print(url, flush=True)
            if not args.no_wait:
                space.wait_until_running(args.repo_id, commit, timeout_s=60 * args.wait_minutes,
                                         say=lambda line: print(line, flush=True))  # fmt: skip
                print(f"running: {url}")
    except space.SpaceDownError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except Exception as err:  # network, auth and broken weights all end up here; say what happened
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo as a Hugging Face Space: the exact folder a Gradio Space runs, staged here, then uploaded.

    python -m tinygpt.hub space USER/NAME                # stage, upload, wait until the Space runs
    python -m tinygpt.hub space USER/NAME --no-wait      # stage, upload, print the Space's URL
    python -m tinygpt.hub space USER/NAME --stage DIR    # only write the folder to DIR and list it
    python -m tinygpt.hub space USER/NAME --hardware cpu # CPU basic instead of ZeroGPU

The folder holds app.py, the tinygpt package (with the C++ source), the weights, the corpus (the
training corpus), a README.md whose front matter configures the Space, a requirements.txt and a
packages.txt (the Debian packages the Space's image installs: the compiler of the C++ step). It goes
up through the Hub's upload API, which stores the 19 MB weights file properly (a plain `git push` of
it is refused). Where the C++ step cannot be built, the page decodes with PyTorch.

ZeroGPU is the default: it is the hardware a free account may host a Gradio Space on; CPU basic
needs a paid plan to create one (docs/deploying.md says where the Hub's docs say so).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinygpt.files.checkpoint import SHARED_FILES, WEIGHTS_DIR, load_model
from tinygpt.files.paths import DEFAULT_DATA

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements.txt"
SHORT_DESCRIPTION = "A character-level GPT trained from scratch on Shakespeare"


@dataclass(frozen=True)
class Hardware:
    """What a Space on this hardware needs from its README front matter and requirements.txt."""

    python_version: str
    suggested_hardware: str  # a huggingface_hub SpaceHardware flavour
    torch_lines: tuple[str, ...]  # the requirements lines that install PyTorch (and what it needs there)


HARDWARE = {
    # CPU basic: the Python the project is tested on (a Space otherwise runs 3.10), and PyTorch's CPU-only
    # wheels from PyTorch's own index (PyPI's Linux torch pulls in gigabytes of CUDA libraries).
    "cpu": Hardware(
        "3.11", "cpu-basic", ("--extra-index-url https://download.pytorch.org/whl/cpu", "torch=={torch}+cpu")
    ),
    # ZeroGPU (https://huggingface.co/docs/hub/spaces-zerogpu, "Supported Versions"): Gradio SDK only,
    # Python 3.12.12 or 3.10.13, PyTorch 2.8.0, 2.9.1, 2.10.0 or 2.11.0. The newest of each, the
    # closest to what the project is tested on (3.11, 2.13): CUDA builds from PyPI, and `spaces`.
    "zero-gpu": Hardware("3.12", "zero-a10g", ("torch==2.11.0", "spaces==0.51.3")),
}
DEFAULT_HARDWARE = "zero-gpu"
# The Debian packages of packages.txt (one per line, each given to apt-get install): the C++ step's
# compiler, which torch.utils.cpp_extension calls as c++. Ninja comes from requirements.txt.
PACKAGES = ("g++",)

# Stages of huggingface_hub's SpaceStage (get_space_runtime): on the way up, and the failures, with
# the logs that tell why (build or run, the Hub's /logs/{build|run}).
STARTING_STAGES = ("BUILDING", "RUNNING_BUILDING", "APP_STARTING", "RUNNING_APP_STARTING")
FAILED_STAGES = {"BUILD_ERROR": "build", "CONFIG_ERROR": "build", "NO_APP_FILE": "build", "RUNTIME_ERROR": "run"}
POLL_S = 5  # how often the stage is read while waiting
SETTLE_S = 60  # a stage counts without a build seen first once this long has passed (nothing to rebuild)


class SpaceError(ValueError):
    """The Space cannot be staged or uploaded; the message says why, in one line."""


class SpaceDownError(SpaceError):
    """The Space was uploaded but did not come up: it failed to build or start, stopped, or took too long."""


def pinned_version(package: str, requirements: Path = REQUIREMENTS) -> str:
    """The version `package==VERSION` pins in a requirements file."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        if match := re.match(rf"{re.escape(package)}==([\w.+-]+)", line.strip()):
            return match.group(1)
    raise SpaceError(f"{requirements} does not pin {package} (expected {package}==VERSION)")


def space_requirements(hardware: Hardware = HARDWARE["cpu"]) -> str:
    """The project's runtime requirements, with PyTorch installed as `hardware` needs it."""
    torch = pinned_version("torch").split("+")[0]
    lines = ["# The Space's requirements: the project's requirements.txt, with PyTorch as this hardware needs it."]
    lines += [line.format(torch=torch) for line in hardware.torch_lines if line.startswith("--")]
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("torch=="):
            lines += [line.format(torch=torch) for line in hardware.torch_lines if not line.startswith("--")]
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def space_card(repo_id: str, hardware: Hardware = HARDWARE["cpu"]) -> str:
    """The README.md of the Space `repo_id`: its configuration as front matter, then what the page is."""
    from huggingface_hub import SpaceCardData

    config = SpaceCardData(
        title="Tiny_GPT", emoji="🎭", colorFrom="indigo", colorTo="red", sdk="gradio",
        sdk_version=pinned_version("gradio"), python_version=hardware.python_version, app_file="app.py",
        license="mit", pinned=False, short_description=SHORT_DESCRIPTION,
        suggested_hardware=hardware.suggested_hardware,
    )  # fmt: skip
    return "\n".join([
        "---", config.to_yaml(), "---", "",
        "# Tiny_GPT", "",
        "A character-level GPT trained from scratch on Tiny Shakespeare. Type the start of a line, pick how many "
        "characters to add and how adventurous, and it writes the rest, one character at a time. The *Model* tab "
        "has the model card and the training curve.", "",
        "The page's `/generate` endpoint also answers programs:", "",
        "```python",
        "from gradio_client import Client",
        "",
        f'print(Client("{repo_id}").predict("ROMEO:", 200, 0.8, api_name="/generate"))',
        "```", "",
        "Set the variable `TINYGPT_MODEL=USER/NAME` (Settings > Variables) to serve another Tiny_GPT from the Hub.",
        "",
    ])  # fmt: skip


def stage(
    out: str | Path, repo_id: str, weights: str | Path = WEIGHTS_DIR, hardware: str = DEFAULT_HARDWARE
) -> list[Path]:
    """Write the folder of the Space `repo_id` to `out` (new or empty) for `hardware` (a HARDWARE key);
    returns its files, relative to `out`.

    The weights are loaded first, so a broken folder is never staged.
    """
    out, weights = Path(out), Path(weights)
    load_model(weights)  # raises WeightsError naming the problem
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpaceError(f"{out} is not an empty folder; stage into a new one")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "app.py", out / "app.py")
    shutil.copytree(ROOT / "tinygpt", out / "tinygpt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "weights").mkdir()
    for name in SHARED_FILES:
        if (weights / name).is_file():
            shutil.copy2(weights / name, out / "weights" / name)
    (out / "data").mkdir()
    shutil.copy2(DEFAULT_DATA, out / "data" / DEFAULT_DATA.name)
    (out / "README.md").write_text(space_card(repo_id, HARDWARE[hardware]), encoding="utf-8")
    (out / "requirements.txt").write_text(space_requirements(HARDWARE[hardware]), encoding="utf-8")
    (out / "packages.txt").write_text("".join(f"{name}\n" for name in PACKAGES), encoding="utf-8")
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())


def check_name(repo_id: str) -> None:
    """Refuse a Space name that cannot be valid, before anything reaches the network."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise SpaceError(f"{repo_id!r} is not a valid Space name (USER/NAME: letters, digits, '-', '_', '.')") from err
    if repo_id.count("/") != 1:
        raise SpaceError(f"{repo_id!r} is not a valid Space name: give it as USER/NAME")


def upload(
    repo_id: str, private: bool = False, weights: str | Path = WEIGHTS_DIR, hardware: str = DEFAULT_HARDWARE
) -> tuple[str, str | None]:
    """Stage the Space in a temporary folder and upload it (the Space is created if missing, and files
    it holds that the folder does not are deleted); returns the Space's URL and the upload's commit
    (None where the Hub made none: nothing had changed)."""
    from huggingface_hub import HfApi, get_token

    check_name(repo_id)
    with tempfile.TemporaryDirectory() as folder:
        stage(folder, repo_id, weights, hardware)
        if get_token() is None:
            raise SpaceError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)")
        api = HfApi()
        try:
            url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True,
                                  space_hardware=HARDWARE[hardware].suggested_hardware)  # fmt: skip
            commit = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder, delete_patterns="*",
                                       commit_message="Deploy the Tiny_GPT demo")  # fmt: skip
        except Exception as err:  # no network, a refused token, a name taken by someone else: say which
            raise SpaceError(f"could not upload the Space {repo_id}: {one_line(err)}") from err
    return str(url), getattr(commit, "oid", None)


def one_line(err: BaseException) -> str:
    """An exception's message, first line only (or its type's name)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def logs_address(repo_id: str, which: str) -> str:
    """Where the Space's build or run logs are: the Hub's API (https://huggingface.co/docs/hub/spaces-gpus,
    "Streaming Logs"), the CLI that reads it, and the page whose Open Logs button shows them."""
    return (f"https://huggingface.co/api/spaces/{repo_id}/logs/{which} "
            f"(`hf spaces logs {repo_id}{' --build' if which == 'build' else ''}`, or Open Logs on "
            f"https://huggingface.co/spaces/{repo_id})")  # fmt: skip


def wait_until_running(
    repo_id: str,
    commit: str | None = None,
    *,
    api: object | None = None,
    timeout_s: float = 1800,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Read the Space's stage (huggingface_hub's get_space_runtime) every POLL_S seconds, saying each
    new one, until it runs; raises SpaceDownError with the stage and the logs' address if it fails to
    build or start, stops, or is still on its way after `timeout_s`.

    Right after an upload the Hub may still report the previous version's stage. Where the runtime
    names the commit it runs (its "sha"), only `commit`'s stages count; elsewhere a stage counts once a
    build has been seen, or after SETTLE_S without one (an upload that changed nothing rebuilds nothing).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    start, last, built = clock(), None, False
    while True:
        try:
            runtime = api.get_space_runtime(repo_id)
        except Exception as err:  # the network, the token: the upload itself went through
            raise SpaceDownError(f"could not read the stage of the Space {repo_id}: {one_line(err)}") from err
        stage = str(getattr(runtime.stage, "value", runtime.stage))
        raw = getattr(runtime, "raw", None) or {}
        fresh = commit is not None and raw.get("sha") == commit  # the runtime names the commit it runs
        previous = commit is not None and raw.get("sha") not in (None, commit)
        waited = clock() - start
        if (stage, previous) != last:
            say(f"{waited:5.0f} s  {stage}{' (the previous version)' if previous else ''}")
            last = stage, previous
        built = built or (stage in STARTING_STAGES and not previous)
        counts = not previous and (fresh or built or waited >= SETTLE_S)
        if counts and stage == "RUNNING":
            return
        if counts and stage in FAILED_STAGES:
            why = f" ({one_line(Exception(raw['errorMessage']))})" if raw.get("errorMessage") else ""
            which = FAILED_STAGES[stage]
            raise SpaceDownError(
                f"the Space {repo_id} stopped at {stage}{why}: its {which} logs are at {logs_address(repo_id, which)}"
            )
        if counts and stage not in STARTING_STAGES:  # STOPPED, PAUSED, SLEEPING, DELETING: not coming up
            raise SpaceDownError(
                f"the Space {repo_id} is {stage}, not running: https://huggingface.co/spaces/{repo_id}"
            )
        if waited >= timeout_s:
            which = "build" if "BUILDING" in stage else "run"
            raise SpaceDownError(
                f"the Space {repo_id} is still {stage}{' (the previous version)' if previous else ''} after "
                f"{waited / 60:.0f} minutes: "
                f"its {which} logs are at {logs_address(repo_id, which)}"
            )
        sleep(POLL_S)

"""The Hugging Face Space: the staged folder, its configuration, its errors, and a rehearsal of its
start (the staged app.py run as a Space runs it, on a fresh machine). Nothing reaches the network."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gradio
import httpx
import huggingface_hub
import pytest
from gradio_client import Client
from huggingface_hub import SpaceCard, SpaceRuntime
from packaging.requirements import Requirement

from tests.conftest import ROOT, free_port, launch, stop_app
from tests.test_zerogpu import STAND_IN
from tinygpt.files.checkpoint import WEIGHTS_DIR
from tinygpt.hub import models as hub
from tinygpt.hub import space

SPACE = "me/tiny-gpt"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Space staged for CPU basic."""
    out = tmp_path_factory.mktemp("space") / "staged"
    assert hub.main(["space", SPACE, "--hardware", "cpu", "--stage", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def staged_zero(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Space staged as `space` stages it by default: for ZeroGPU."""
    out = tmp_path_factory.mktemp("space") / "zero"
    assert hub.main(["space", SPACE, "--stage", str(out)]) == 0
    return out


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_stage_holds_the_page_and_nothing_else(staged):
    package = {f"tinygpt/{p.relative_to(ROOT / 'tinygpt').as_posix()}" for p in (ROOT / "tinygpt").rglob("*.py")}
    weights = {f"weights/{name}" for name in hub.SHARED_FILES if (WEIGHTS_DIR / name).is_file()}
    expected = {"app.py", "README.md", "requirements.txt", "packages.txt", "data/tinyshakespeare.txt",
                "tinygpt/serving/csrc/decode.cpp"}  # fmt: skip
    assert files_under(staged) == expected | package | weights
    assert "weights/model.safetensors" in weights and "tinygpt/app.py" not in package
    assert (staged / "weights" / "model.safetensors").read_bytes() == (WEIGHTS_DIR / "model.safetensors").read_bytes()


def test_stage_lists_each_file_with_its_size(tmp_path, capsys):
    out = tmp_path / "staged"
    assert hub.main(["space", SPACE, "--stage", str(out)]) == 0
    *listed, total = capsys.readouterr().out.splitlines()
    sizes = {name: int(size.replace(",", "")) for size, name in (line.split() for line in listed)}
    assert sizes == {name: (out / name).stat().st_size for name in files_under(out)}
    assert total.split()[0].replace(",", "") == str(sum(sizes.values()))


def test_space_readme_front_matter_configures_a_gradio_space(staged):
    pin = re.search(r"^gradio==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    card = SpaceCard.load(staged / "README.md").data
    assert card.sdk == "gradio" and card.sdk_version == pin == gradio.__version__
    assert card.python_version == "3.11" and (staged / card.app_file).is_file()
    assert card.suggested_hardware == "cpu-basic"
    assert card.title and card.emoji and card.license == "mit"
    assert 0 < len(card.short_description) <= 60  # the Hub's limit
    assert f'Client("{SPACE}")' in (staged / "README.md").read_text()


def test_space_requirements_install_the_cpu_only_torch(staged):
    lines = [line.split("#")[0].strip() for line in (staged / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    wanted = {Requirement(line).name: Requirement(line) for line in lines[1:]}  # each line is a valid requirement
    project = [Requirement(line.split("#")[0]) for line in (ROOT / "requirements.txt").read_text().splitlines()
               if line.split("#")[0].strip()]  # fmt: skip
    assert set(wanted) == {r.name for r in project}
    torch_pin = next(str(r.specifier) for r in project if r.name == "torch")
    assert str(wanted["torch"].specifier) == f"{torch_pin}+cpu"
    assert all(str(wanted[r.name]) == str(r) for r in project if r.name != "torch")


def test_zero_gpu_stage_declares_what_zero_gpu_needs(staged, staged_zero):
    """The versions of ZeroGPU's "Supported Versions" (hub-docs, spaces-zerogpu.md, read 2026-12-08):
    Python 3.12.12 or 3.10.13, PyTorch 2.8.0 to 2.11.0; the newest of each."""
    card = SpaceCard.load(staged_zero / "README.md").data
    assert card.suggested_hardware == "zero-a10g" and card.sdk == "gradio"  # the default of `space`
    assert card.python_version == "3.12"
    lines = [line.split("#")[0].strip() for line in (staged_zero / "requirements.txt").read_text().splitlines()]
    wanted = {Requirement(line).name: Requirement(line) for line in lines if line}  # no index options: all PyPI
    assert str(wanted["torch"].specifier) == "==2.11.0"  # CUDA builds, from PyPI
    assert "spaces" in wanted and "gradio" in wanted
    assert files_under(staged_zero) == files_under(staged)  # the same page as on CPU basic


def test_packages_txt_declares_the_compiler_of_the_cpp_step(staged, staged_zero):
    """The Space's image installs each line of packages.txt with apt-get (hub-docs, spaces-dependencies.md)."""
    for folder in (staged, staged_zero):
        assert (folder / "packages.txt").read_text().splitlines() == ["g++"]


@pytest.mark.parametrize("name", ["not a name", "noslash", "me/tiny/gpt", "me/tiny--gpt", "me/-tiny"])
def test_a_bad_space_name_is_refused_before_anything_else(fake_hub, tmp_path, capsys, name):
    assert hub.main(["space", name]) == 2
    assert hub.main(["space", name, "--stage", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"error: {name!r} is not a valid Space name") for line in err)
    assert not fake_hub and not (tmp_path / "out").exists()


def test_broken_weights_are_refused_before_staging_or_upload(fake_hub, tiny_weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    broken = shutil.copytree(tiny_weights, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    assert hub.main(["space", SPACE, "--weights", str(broken), "--stage", str(tmp_path / "out")]) == 2
    assert hub.main(["space", SPACE, "--weights", str(broken)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("model.safetensors is not a readable safetensors file" in line for line in err)
    assert not fake_hub and not (tmp_path / "out").exists()


def test_stage_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("left over")
    assert hub.main(["space", SPACE, "--stage", str(tmp_path)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert files_under(tmp_path) == {"old.txt"}


def test_no_token_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env |= {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # an empty home: no saved token either
    command = [sys.executable, "-m", "tinygpt.hub", "space", SPACE]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)"
    ]


class RuntimeStandIn:
    """huggingface_hub's HfApi.get_space_runtime, answering the stages it is given in turn (the last one
    again and again), each a real SpaceRuntime; `raw` adds fields to every answer."""

    def __init__(self, *stages: str, **raw: object) -> None:
        self.stages, self.raw, self.asked = list(stages), raw, 0

    def get_space_runtime(self, repo_id: str, **kwargs) -> SpaceRuntime:
        assert repo_id == SPACE
        self.asked += 1
        stage = self.stages.pop(0) if len(self.stages) > 1 else self.stages[0]
        return SpaceRuntime({"stage": stage, "hardware": {"current": None, "requested": "zero-a10g"}, **self.raw})


@pytest.fixture
def runtime(fake_hub, monkeypatch):
    """Uploads recorded (fake_hub) and the Space's stages scripted: set `.stages` on the stand-in returned."""
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(space, "POLL_S", 0)
    stand_in = RuntimeStandIn("RUNNING")
    monkeypatch.setattr(huggingface_hub.HfApi, "get_space_runtime", lambda self, repo_id, **kw: (
        stand_in.get_space_runtime(repo_id, **kw)))  # fmt: skip
    return stand_in


def test_upload_creates_a_gradio_space_and_mirrors_the_staged_folder(runtime, fake_hub, capsys):
    assert hub.main(["space", SPACE, "--private", "--no-wait"]) == 0
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/{SPACE}"
    assert runtime.asked == 0  # --no-wait: the stage is never read
    create = fake_hub["create_repo"]
    assert create["repo_id"] == SPACE and create["repo_type"] == "space" and create["space_sdk"] == "gradio"
    assert create["exist_ok"] and create["private"] and create["space_hardware"] == "zero-a10g"
    upload = fake_hub["upload_folder"]
    assert upload["repo_id"] == SPACE and upload["repo_type"] == "space" and upload["delete_patterns"] == "*"
    assert upload["files"] == ["README.md", "app.py", "data", "packages.txt", "requirements.txt", "tinygpt", "weights"]
    assert not upload["folder_path"].exists()  # the staging folder is temporary


def test_space_waits_until_the_space_runs_saying_each_stage_once(runtime, capsys):
    runtime.stages = ["RUNNING", "BUILDING", "BUILDING", "APP_STARTING", "APP_STARTING", "RUNNING"]
    assert hub.main(["space", SPACE]) == 0
    url, *stages, done = capsys.readouterr().out.splitlines()
    assert url == f"https://huggingface.co/{SPACE}" and done == f"running: {url}"
    # The first RUNNING is the previous version's, before the Hub starts the new build: not the end.
    assert [line.split()[-1] for line in stages] == ["RUNNING", "BUILDING", "APP_STARTING", "RUNNING"]
    assert runtime.asked == 6


@pytest.mark.parametrize("stage, logs", [("BUILD_ERROR", "build"), ("CONFIG_ERROR", "build"), ("RUNTIME_ERROR", "run")])
def test_a_space_that_fails_to_come_up_exits_non_zero_with_its_stage_and_logs(runtime, capsys, stage, logs):
    runtime.stages = ["BUILDING", stage]
    runtime.raw = {"errorMessage": "Exit code: 1. Reason: no space left\nmore"}
    assert hub.main(["space", SPACE]) == 3
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].split()[-1] == stage
    command = f"hf spaces logs {SPACE}" + (" --build" if logs == "build" else "")
    assert err.splitlines() == [
        f"error: the Space {SPACE} stopped at {stage} (Exit code: 1. Reason: no space left): its {logs} logs are at "
        f"https://huggingface.co/api/spaces/{SPACE}/logs/{logs} (`{command}`, or Open Logs on "
        f"https://huggingface.co/spaces/{SPACE})"
    ]


def test_a_stage_that_cannot_be_read_is_one_clear_line(runtime, monkeypatch, capsys):
    def offline(self, repo_id, **kwargs):
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "get_space_runtime", offline)
    assert hub.main(["space", SPACE]) == 3
    assert capsys.readouterr().err.splitlines() == [
        f"error: could not read the stage of the Space {SPACE}: [Errno -2] Name or service not known"
    ]


class Clock:
    """time.monotonic and time.sleep for wait_until_running: each sleep moves the clock on."""

    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def wait(stand_in: RuntimeStandIn, commit: str | None = None, timeout_s: float = 1800) -> list[str]:
    said, clock = [], Clock()
    space.wait_until_running(SPACE, commit, api=stand_in, timeout_s=timeout_s, say=said.append,
                             sleep=clock.sleep, clock=clock)  # fmt: skip
    return said


def test_waiting_counts_only_the_stages_of_the_uploaded_commit_where_the_hub_names_it():
    stand_in = RuntimeStandIn("RUNTIME_ERROR", "BUILDING", "RUNNING", sha="old")
    with pytest.raises(space.SpaceDownError, match=r"is still RUNNING \(the previous version\) after 30 minutes"):
        wait(stand_in, commit="new")  # the previous version's stages, however long
    stand_in = RuntimeStandIn("RUNNING", sha="new")
    assert wait(stand_in, commit="new") == ["    0 s  RUNNING"]  # the new version already runs


def test_a_running_space_that_had_nothing_to_rebuild_counts_after_a_while():
    said = wait(RuntimeStandIn("RUNNING"))
    assert said == ["    0 s  RUNNING"] and space.SETTLE_S <= 60


def test_a_space_still_building_at_the_deadline_exits_non_zero():
    with pytest.raises(space.SpaceDownError) as late:
        wait(RuntimeStandIn("BUILDING"), timeout_s=600)
    assert str(late.value).startswith(f"the Space {SPACE} is still BUILDING after 10 minutes: its build logs are at ")


def test_an_unreachable_hub_is_one_clear_line(fake_hub, monkeypatch, capsys):
    def offline(self, repo_id, **kwargs):
        raise httpx.ConnectError("[Errno -2] Name or service not known\nmore detail")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert hub.main(["space", SPACE]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: could not upload the Space {SPACE}: [Errno -2] Name or service not known"
    ]
    assert "upload_folder" not in fake_hub


# --- Rehearsal: the staged folder started as a Space starts it ------------------------------------------


# A compiler that is there (it answers --version, as PyTorch checks first) but fails every build.
FAILING_COMPILER = """#!/bin/sh
case "$1" in --version|-v|-dumpversion) echo "c++ (a stand-in) 14.2.0"; exit 0;; esac
echo "c++: internal compiler error (a stand-in)" >&2
exit 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["with-compiler", "no-compiler", "failing-compiler", "zero-gpu"])
def test_staged_space_starts_on_a_fresh_machine_and_answers(staged, staged_zero, tmp_path, setup):
    """`python app.py` with no arguments from the staged folder, configured only by the variables a Space
    sets, with an empty home, build cache and Hub cache. Without a C++ compiler, or with one that fails,
    it decodes with PyTorch. On ZeroGPU (the stand-in `spaces`, no compiler) it imports `spaces` first
    and decorates the training."""
    folders = {name: tmp_path / name for name in ("home", "torch_extensions", "hf_home", "bin")}
    for folder in folders.values():
        folder.mkdir()
    if setup == "failing-compiler":
        for name in ("c++", "g++", "cc", "gcc"):
            (folders["bin"] / name).write_text(FAILING_COMPILER)
            (folders["bin"] / name).chmod(0o755)
    port = free_port()
    env = {
        # an empty bin (no c++, no g++) or one whose compilers fail; the tools the shell needs stay
        "PATH": os.environ["PATH"] if setup == "with-compiler" else str(folders["bin"]),
        "HOME": str(folders["home"]),
        "TORCH_EXTENSIONS_DIR": str(folders["torch_extensions"]),
        "HF_HOME": str(folders["hf_home"]),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # leaves the module's staged folder as staged
    }
    folder = staged
    if setup == "zero-gpu":
        folder = staged_zero
        (tmp_path / "spaces").mkdir()
        (tmp_path / "spaces" / "__init__.py").write_text(textwrap.dedent(STAND_IN))
        env |= {"SPACES_ZERO_GPU": "true", "PYTHONPATH": str(tmp_path), "SPACES_STAND_IN_LOG": str(tmp_path / "log")}
    log = tmp_path / "space.log"
    # Generous: until the page serves before the C++ step is built, a cold start includes the build.
    process, url = launch([sys.executable, "app.py"], folder, env, port, log, timeout_s=600)
    try:
        text = Client(url, verbose=False).predict("ROMEO:", 50, 0.8, 0, 1.0, 3, api_name="/generate")
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 50, log.read_text()
        if setup != "with-compiler":  # the fallback really ran: nothing was built, and the page says so
            deadline = time.monotonic() + 120
            while "staying on PyTorch" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert "staying on PyTorch" in log.read_text(), log.read_text()
    finally:
        stop_app(process)
    if setup != "with-compiler":
        assert not list(folders["torch_extensions"].rglob("*.so")), log.read_text()
    if setup == "failing-compiler":
        assert "C++ decode step could not be built" in log.read_text() and "--version" not in log.read_text()
    if setup == "zero-gpu":
        records = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
        assert records == [{"imported": True, "after": []}, {"decorated": "train_on_gpu"}]

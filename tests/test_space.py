"""The Hugging Face Space: the staged folder, its configuration, its errors, and a rehearsal of its
start (the staged app.py run as a Space runs it, on a fresh machine). Nothing reaches the network."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio
import httpx
import huggingface_hub
import pytest
from gradio_client import Client
from huggingface_hub import SpaceCard
from packaging.requirements import Requirement

from tests.conftest import ROOT, free_port, launch, stop_app
from tinygpt.files.checkpoint import WEIGHTS_DIR
from tinygpt.hub import models as hub

SPACE = "me/tiny-gpt"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("space") / "staged"
    assert hub.main(["space", SPACE, "--stage", str(out)]) == 0
    return out


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_stage_holds_the_page_and_nothing_else(staged):
    package = {f"tinygpt/{p.relative_to(ROOT / 'tinygpt').as_posix()}" for p in (ROOT / "tinygpt").rglob("*.py")}
    weights = {f"weights/{name}" for name in hub.SHARED_FILES if (WEIGHTS_DIR / name).is_file()}
    cpp = "tinygpt/serving/csrc/decode.cpp"
    expected = {"app.py", "README.md", "requirements.txt", "data/tinyshakespeare.txt", cpp}
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


def test_zero_gpu_stage_declares_what_zero_gpu_needs(staged, tmp_path):
    out = tmp_path / "zero"
    assert hub.main(["space", SPACE, "--hardware", "zero-gpu", "--stage", str(out)]) == 0
    card = SpaceCard.load(out / "README.md").data
    assert card.suggested_hardware == "zero-a10g" and card.sdk == "gradio"
    assert card.python_version == "3.10"  # the version ZeroGPU's documentation lists
    lines = [line.split("#")[0].strip() for line in (out / "requirements.txt").read_text().splitlines()]
    wanted = {Requirement(line).name: Requirement(line) for line in lines if line}  # no index options: all PyPI
    assert str(wanted["torch"].specifier) == "==2.8.0"  # a version on ZeroGPU's supported list, CUDA build
    assert "spaces" in wanted and "gradio" in wanted
    assert files_under(out) == files_under(staged)  # the same page as on CPU basic


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


def test_upload_creates_a_gradio_space_and_mirrors_the_staged_folder(fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert hub.main(["space", SPACE, "--private"]) == 0
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/{SPACE}"
    create = fake_hub["create_repo"]
    assert create["repo_id"] == SPACE and create["repo_type"] == "space" and create["space_sdk"] == "gradio"
    assert create["exist_ok"] and create["private"] and create["space_hardware"] == "cpu-basic"
    upload = fake_hub["upload_folder"]
    assert upload["repo_id"] == SPACE and upload["repo_type"] == "space" and upload["delete_patterns"] == "*"
    assert upload["files"] == ["README.md", "app.py", "data", "requirements.txt", "tinygpt", "weights"]
    assert not upload["folder_path"].exists()  # the staging folder is temporary


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


@pytest.mark.slow
@pytest.mark.parametrize("compiler", [True, False], ids=["with-compiler", "no-compiler"])
def test_staged_space_starts_on_a_fresh_machine_and_answers(staged, tmp_path, compiler):
    """`python app.py` with no arguments from the staged folder, configured only by the variables a Space
    sets, with an empty home, build cache and Hub cache; without a C++ compiler it decodes with PyTorch."""
    folders = {name: tmp_path / name for name in ("home", "torch_extensions", "hf_home", "bin")}
    for folder in folders.values():
        folder.mkdir()
    port = free_port()
    env = {
        "PATH": os.environ["PATH"] if compiler else str(folders["bin"]),  # an empty bin: no c++, no g++
        "HOME": str(folders["home"]),
        "TORCH_EXTENSIONS_DIR": str(folders["torch_extensions"]),
        "HF_HOME": str(folders["hf_home"]),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # leaves the module's staged folder as staged
    }
    log = tmp_path / "space.log"
    # Generous: until the page serves before the C++ step is built, a cold start includes the build.
    process, url = launch([sys.executable, "app.py"], staged, env, port, log, timeout_s=600)
    try:
        text = Client(url, verbose=False).predict("ROMEO:", 50, 0.8, 0, 1.0, 3, api_name="/generate")
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 50, log.read_text()
    finally:
        stop_app(process)
    if not compiler:  # the fallback really ran: nothing was built
        assert not list(folders["torch_extensions"].rglob("*.so")), log.read_text()

"""The Hub is never reached in tests: huggingface_hub's calls are replaced by local stand-ins."""

import shutil

import huggingface_hub
import pytest
import torch

from tinygpt import hub
from tinygpt.checkpoint import load_model


def test_hf_names_load_through_snapshot_download(tiny_weights, tiny_model, tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return shutil.copytree(tiny_weights, tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_model("hf://someone/tiny-gpt@v1")
    assert calls == [("someone/tiny-gpt", "v1", hub.SHARED_FILES)]
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(idx)[0], load_model(tiny_weights)(idx)[0])


def test_hub_failures_become_a_clear_file_not_found(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match=r"could not fetch hf://someone/tiny-gpt .*network unreachable"):
        load_model("hf://someone/tiny-gpt")


def test_push_uploads_only_the_shareable_files(tiny_weights, monkeypatch):
    uploaded = {}

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message):
            uploaded.update(repo_id=repo_id, folder=folder_path, patterns=allow_patterns)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert hub.push(tiny_weights, "me/tiny") == "https://huggingface.co/me/tiny"
    assert uploaded == {"repo_id": "me/tiny", "folder": tiny_weights, "patterns": hub.SHARED_FILES}
    assert hub.main(["push", "no/such/folder", "me/tiny"]) == 2

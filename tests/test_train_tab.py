"""The Train tab: its checks, the training process, per-session models, and the /train API end to end."""

from __future__ import annotations

import math
import os
import random
import re
import sys
import time
import zipfile

import gradio as gr
import huggingface_hub
import pytest
from conftest import ROOT, free_port, launch, stop_app, tiny_recipe
from gradio_client import Client

from tinygpt.files.checkpoint import load_model
from tinygpt.serving.generate import InputError
from tinygpt.training.playground import (
    MAX_UPLOAD_BYTES,
    TrainingJob,
    VisitorModel,
    VisitorModels,
    check_minutes,
    check_text,
    pack,
    read_upload,
    shortest_text,
)
from tinygpt.web.train_tab import TrainSettings, build_train_tab

GREEK = ["καλημέρα", "κόσμε", "θάλασσα", "ήλιος", "φως", "νύχτα", "δέντρο", "πόλη", "λόγος", "ψυχή"]
LATIN = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do"]


def words(vocabulary: list[str], n_chars: int, seed: int) -> str:
    """Lines of random words from `vocabulary`: text with a small alphabet and plenty of structure."""
    rng, lines = random.Random(seed), []
    while sum(map(len, lines)) < n_chars:
        lines.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, 8))) + ".\n")
    return "".join(lines)


# --- Checks ----------------------------------------------------------------------------------------


def test_shortest_text_is_the_fewest_characters_the_trainer_accepts(tmp_path):
    from tinygpt.training.data import load_corpus

    n = shortest_text(16)
    (tmp_path / "ok.txt").write_text("ab" * (n // 2) + "a" * (n % 2))
    load_corpus(tmp_path / "ok.txt", 16)
    (tmp_path / "short.txt").write_text("ab" * ((n - 1) // 2) + "a" * ((n - 1) % 2))
    with pytest.raises(ValueError, match="too short"):
        load_corpus(tmp_path / "short.txt", 16)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no text to train on"),
        ("  \n\t ", "no text to train on"),
        ("abc" * 10, "needs at least"),
        ("ab\x00c" * 100, "binary"),
        (None, "must be a string"),
        ("".join(chr(0x4E00 + i) for i in range(6000)), "different characters"),
    ],
)
def test_bad_text_is_one_clear_sentence(text, message):
    with pytest.raises(InputError, match=message):
        check_text(text, 16)


def test_windows_line_endings_are_read_as_newlines():
    assert check_text("a b\r\nc d\r\n" * 50, 16) == "a b\nc d\n" * 50


@pytest.mark.parametrize("minutes", [0.0, 0.4, 10.5, -1, float("nan"), "1", True, None])
def test_minutes_out_of_range_are_refused(minutes):
    with pytest.raises(InputError, match=r"minutes must be a number from 0\.5 to 10"):
        check_minutes(minutes)


def test_uploads_must_be_utf8_text_within_the_size_limit(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(("\ufeff" + GREEK[0] + "\n").encode())
    assert read_upload(good) == GREEK[0] + "\n"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café crème".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt is not UTF-8 text"):
        read_upload(latin1)
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(InputError, match=r"not UTF-8|binary"):
        read_upload(binary)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"text\x00with a NUL")
    with pytest.raises(InputError, match="binary"):
        read_upload(nul)
    largest = tmp_path / "largest.txt"
    largest.write_bytes(b"a" * MAX_UPLOAD_BYTES)
    assert len(read_upload(largest)) == MAX_UPLOAD_BYTES
    largest.write_bytes(b"a" * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(InputError, match=r"largest\.txt is 5\.0 MB; the limit is 5 MB"):
        read_upload(largest)
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as f:
        f.truncate(100 * 2**20)  # a sparse 100 MB file: nothing is written
    with pytest.raises(InputError, match=rf"100\.0 MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB"):
        read_upload(huge)


# --- The training process --------------------------------------------------------------------------


def test_stop_ends_a_training_early_and_keeps_the_model(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(words(LATIN, 3000, 1), encoding="utf-8")
    job = TrainingJob(tiny_recipe(0.5), data, tmp_path / "out")
    try:
        events = []
        for event in job.events():
            events.append(event)
            if event["event"] == "step" and event["step"] >= 20:
                job.stop()
        job.process.wait(timeout=60)  # closing a job whose process has ended is quiet
    finally:
        job.close()
    summary = events[-1]["summary"]
    assert summary["stopped"] and summary["elapsed_s"] < 30
    assert [e["event"] for e in events][:2] == ["start", "eval"]  # the first estimate, at step 0
    assert any(e["event"] == "sample" for e in events)
    model = load_model(tmp_path / "out")
    assert model.config.vocab == "".join(sorted(set(data.read_text(encoding="utf-8"))))


def test_visitor_models_are_freed_on_drop_and_beyond_the_limit(tmp_path, tiny_model):
    models = VisitorModels(tmp_path, max_kept=2)
    folders = {}
    for session in ("a", "b", "c"):
        folders[session] = models.folder(session)
        models.keep(session, VisitorModel(folders[session], tiny_model, {}))
        models.get("a")  # "a" is used, so "b" is the least recently used when "c" arrives
    assert models.get("b") is None and not folders["b"].exists()
    assert models.get("a") and models.get("c")
    models.drop("a")
    assert models.get("a") is None and not folders["a"].exists()


def test_the_zip_loads_with_load_model_and_from_pretrained(tmp_path, tiny_model):
    from tinygpt.files.checkpoint import save_model
    from tinygpt.hub.models import TinyGPT

    save_model(tiny_model, tmp_path)
    (tmp_path / "text.txt").write_text("not shipped")
    with zipfile.ZipFile(pack(tmp_path)) as zipped:
        assert sorted(zipped.namelist()) == ["tinygpt-model/README.md", "tinygpt-model/config.json",
                                             "tinygpt-model/model.safetensors"]  # fmt: skip
        zipped.extractall(tmp_path / "unzipped")
    unzipped = tmp_path / "unzipped" / "tinygpt-model"
    for model in (load_model(unzipped), TinyGPT.from_pretrained(unzipped)):
        assert model.config == tiny_model.config


# --- The page's API, served in this process ---------------------------------------------------------


@pytest.mark.slow
def test_the_train_api_streams_and_its_model_writes_in_its_own_alphabet(train_server, tmp_path):
    text = words(GREEK, 4000, 2)
    client = Client(train_server[0], verbose=False)
    job = client.submit(text, 0.1, api_name="/train")
    progress, curve, sample, val_loss, archive = job.result(timeout=120)
    alphabet = set(text)
    assert val_loss < math.log(len(alphabet))  # below the uniform guess: it learned something
    assert "validation loss" in progress
    rows = [dict(zip(curve["columns"], row, strict=True)) for row in curve["data"]]
    assert {row["split"] for row in rows} == {"train", "validation"}
    validation = [row["loss"] for row in rows if row["split"] == "validation"]
    assert validation[0] > math.log(len(alphabet)) - 1 > validation[-1]  # from about a uniform guess, down
    assert len(job.outputs()) > 3  # it streamed
    assert set(sample.split("\n", 1)[1]) <= alphabet
    written = client.predict("καλη", 100, 0.8, api_name="/generate_trained")
    assert written.startswith("καλη") and len(written) == 104 and set(written) <= alphabet
    with pytest.raises(Exception, match="unsupported character"):
        client.predict("hello", 10, 0.8, api_name="/generate_trained")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path)
    assert set(load_model(tmp_path / "tinygpt-model").config.vocab) == alphabet


@pytest.mark.slow
def test_each_session_writes_with_its_own_model_and_waits_its_turn(train_server):
    greek, latin = words(GREEK, 3000, 3), words(LATIN, 3000, 4)
    first, second, third = (Client(train_server[0], verbose=False) for _ in range(3))
    job_a = first.submit(greek, 0.1, api_name="/train")
    job_b = second.submit(latin, 0.1, api_name="/train")
    jobs = [job_a, job_b]  # either may reach the server first
    while not any(job.outputs() for job in jobs):
        time.sleep(0.02)
    running, waiting = sorted(jobs, key=lambda job: not job.outputs())
    while not waiting.outputs() and not waiting.done():  # one training at a time: the other waits for its turn
        time.sleep(0.02)
    assert running.result(timeout=3)[3] is not None  # so the first's result is a message away, not 6 s of training
    job_a.result(timeout=120), job_b.result(timeout=120)
    text_a = first.predict("", 200, 1.0, api_name="/generate_trained")
    text_b = second.predict("", 200, 1.0, api_name="/generate_trained")
    assert set(text_a) <= set(greek) and set(text_b) <= set(latin)
    assert set(text_a) & set(GREEK[0]) and set(text_b) & set(LATIN[0])  # each wrote in its own alphabet
    with pytest.raises(Exception, match="no trained model in your session"):
        third.predict("", 10, 1.0, api_name="/generate_trained")


@pytest.mark.slow
def test_bad_input_is_a_clear_error_and_the_queue_moves_on(train_server):
    client = Client(train_server[0], verbose=False)
    text = words(LATIN, 3000, 5)
    for args, message in [
        (("", 0.1), "no text to train on"),
        (("short text", 0.1), "needs at least"),
        (("ab\x00c" * 1000, 0.1), "binary"),
        ((text, 0.0), "less than minimum value 0.05"),  # the slider's own check, before ours
        ((text, 11.0), "greater than maximum value 0.5"),
    ]:
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(*args, api_name="/train")
    assert client.predict(text, 0.05, api_name="/train")[3] < math.log(len(set(text)))


# --- app.py: on by default, off with --no-train or TINYGPT_NO_TRAIN=1 -------------------------------


def endpoints(url: str) -> set[str]:
    return set(Client(url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"])


@pytest.mark.slow
def test_app_serves_the_train_api_unless_turned_off(server, tiny_weights, tmp_path):
    assert {"/generate", "/train", "/generate_trained"} <= endpoints(server)
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(tiny_weights)]
    env = {**os.environ, "TINYGPT_NO_TRAIN": "1"}
    process, url = launch(command, ROOT, env, port, tmp_path / "app.log")
    try:
        assert endpoints(url) == {"/generate"}
    finally:
        stop_app(process)


def test_push_uploads_the_sessions_model_only_where_a_token_is_configured(monkeypatch, fake_hub, tiny_model, tmp_path):
    from tinygpt.files.checkpoint import save_model

    def push_handler(models: VisitorModels):
        with gr.Blocks() as demo:
            build_train_tab(demo, TrainSettings(), models)
        return next((dep.fn for dep in demo.fns.values() if dep.name == "push"), None)

    models = VisitorModels(tmp_path)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert push_handler(models) is None  # no token: no push button
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    push = push_handler(models)
    folder = models.folder("session-a")
    save_model(tiny_model, folder)
    models.keep("session-a", VisitorModel(folder, tiny_model, {}))
    assert "USER/mine" in push(" USER/mine ", gr.Request(session_hash="session-a"))
    assert fake_hub["upload_folder"]["repo_id"] == "USER/mine" and fake_hub["upload_folder"]["folder_path"] == folder
    with pytest.raises(gr.Error, match="no trained model"):
        push("USER/mine", gr.Request(session_hash="session-b"))

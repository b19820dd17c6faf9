"""ZeroGPU: with SPACES_ZERO_GPU set, the Train tab's runs go through `spaces.GPU` (a stand-in here that
records what it decorates and the duration asked for); without it, the app uses nothing of `spaces`
(which Gradio imports by itself wherever it is installed)."""

import json
import math
import os
import sys
import textwrap

import gradio as gr
import pytest
from gradio_client import Client

from tests.conftest import ROOT, free_port, launch, stop_app, tiny_recipe
from tests.test_train_tab import LATIN, words
from tinygpt.hub import zerogpu
from tinygpt.training.playground import VisitorModels
from tinygpt.web.train_tab import TrainSettings, build_train_tab

STAND_IN = '''
"""A stand-in for Hugging Face's `spaces` package: records imports, decorations and calls."""
import json, os

def _record(**event):
    with open(os.environ["SPACES_STAND_IN_LOG"], "a") as log:
        log.write(json.dumps(event) + "\\n")

_record(imported=True)

def GPU(duration=60):
    def decorate(function):
        _record(decorated=function.__name__)
        def on_gpu(*args):
            _record(called=function.__name__, duration=duration(*args) if callable(duration) else duration)
            yield from function(*args)
        return on_gpu
    return decorate
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """The stand-in `spaces` on the import path (here and for child processes); returns a reader of its log."""
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "__init__.py").write_text(textwrap.dedent(STAND_IN))
    log = tmp_path / "spaces.jsonl"
    log.touch()
    monkeypatch.setenv("SPACES_STAND_IN_LOG", str(log))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()]


def test_the_gpu_time_asked_for_is_the_budget_plus_a_margin():
    config = tiny_recipe(2.5)
    assert zerogpu.gpu_seconds(config.to_json(), "text.txt", "out") == 150 + zerogpu.MARGIN_S


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("false", False), ("1", True), ("true", True)])
def test_zero_gpu_is_recognised_by_the_variable_the_hub_sets(monkeypatch, value, expected):
    monkeypatch.setenv("SPACES_ZERO_GPU", value)
    assert zerogpu.enabled() is expected


@pytest.mark.slow
def test_the_train_api_runs_through_the_decorated_function(stand_in, tmp_path):
    models = VisitorModels(tmp_path / "models")
    job = zerogpu.gpu_training()
    assert stand_in() == [{"imported": True}, {"decorated": "train_on_gpu"}]  # at start-up, as ZeroGPU checks
    with gr.Blocks() as demo, gr.Tab("Train"):
        build_train_tab(demo, TrainSettings(0.05, 0.5, tiny_recipe, job=job), models)
    demo.queue()
    _, url, _ = demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        text = words(LATIN, 3000, 6)
        *_, val_loss, download = Client(url, verbose=False).predict(text, 0.05, api_name="/train")
    finally:
        demo.close()
        models.close()
    assert val_loss < math.log(len(set(text))) and download.endswith(".zip")
    assert stand_in()[2:] == [{"called": "train_on_gpu", "duration": round(60 * 0.05) + zerogpu.MARGIN_S}]


@pytest.mark.slow
@pytest.mark.parametrize("zero_gpu", [True, False], ids=["zero-gpu", "cpu"])
def test_the_app_decorates_training_only_on_zero_gpu(stand_in, tiny_weights, tmp_path, zero_gpu):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("SPACES_ZERO_GPU", None)
    if zero_gpu:
        env["SPACES_ZERO_GPU"] = "1"
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--model", str(tiny_weights), "--backend", "torch"]
    process, url = launch(command, ROOT, env, port, tmp_path / "app.log")
    try:
        text = Client(url, verbose=False).predict("ROMEO:", 25, 0.8, api_name="/generate")
    finally:
        stop_app(process)
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 25  # generation stays on the CPU
    # Gradio itself imports `spaces` wherever it is installed; the app decorates nothing off ZeroGPU.
    assert [event for event in stand_in() if "imported" not in event] == (
        [{"decorated": "train_on_gpu"}] if zero_gpu else []
    )

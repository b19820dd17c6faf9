"""ZeroGPU: with SPACES_ZERO_GPU set, the Train tab's runs go through `spaces.GPU` (a stand-in here that
records what it decorates and the duration asked for); without it, the app uses nothing of `spaces`
(which Gradio imports by itself wherever it is installed)."""

import json
import math
import os
import subprocess
import sys
import textwrap

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.conftest import ROOT, free_port, launch, stop_app, tiny_recipe
from tests.test_train_tab import LATIN, words
from tinygpt.files.checkpoint import load_model
from tinygpt.hub import zerogpu
from tinygpt.training.playground import TrainingError, VisitorModels
from tinygpt.web.train_tab import TrainSettings, build_train_tab

STAND_IN = '''
"""A stand-in for Hugging Face's `spaces` package: records imports, decorations and calls. Each call
does what SPACES_STAND_IN_MODE says: "succeed" (the default), "refuse" (as ZeroGPU refuses a duration
or quota it cannot grant: before anything runs) or "abort" (as ZeroGPU cuts a call short: after the
first step event, the function's generator is closed and the call raises). The errors are the ones
`spaces` 0.51.3 raises: gradio.Error with ZeroGPU's message."""
import json, os, sys

def _record(**event):
    with open(os.environ["SPACES_STAND_IN_LOG"], "a") as log:
        log.write(json.dumps(event) + "\\n")

_record(imported=True, after=[name for name in ("torch", "gradio") if name in sys.modules])
if os.environ.get("SPACES_STAND_IN_EXIT"):  # what was imported before this is all that is asked
    raise SystemExit(0)

def GPU(duration=60):
    def decorate(function):
        _record(decorated=function.__name__)
        def on_gpu(*args):
            asked = duration(*args) if callable(duration) else duration
            _record(called=function.__name__, duration=asked)
            mode = os.environ.get("SPACES_STAND_IN_MODE", "succeed")
            if mode == "refuse":
                import gradio
                raise gradio.Error(f"The requested GPU duration ({asked}s) is larger than the maximum allowed")
            events = function(*args)
            try:
                for event in events:
                    yield event
                    if mode == "abort" and event["event"] == "step":
                        import gradio
                        raise gradio.Error("GPU task aborted", title="ZeroGPU worker error")
            finally:
                events.close()
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


def calls(log: list[dict]) -> list[dict]:
    """The stand-in's log without its imports."""
    return [event for event in log if "imported" not in event]


def test_the_gpu_time_asked_for_is_the_budget_plus_a_margin(monkeypatch):
    monkeypatch.delenv(zerogpu.MAX_GPU_S_VARIABLE, raising=False)
    assert zerogpu.gpu_seconds(tiny_recipe(2.5).to_json(), "text.txt", "out") == 150 + zerogpu.MARGIN_S


def test_a_gpu_call_never_asks_for_more_than_the_bound(monkeypatch):
    """Asked for more than a visitor may hold, ZeroGPU refuses the call at once: the bound caps both
    what is asked for and the Train tab's slider, and the Space's variable moves it."""
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    monkeypatch.delenv(zerogpu.MAX_GPU_S_VARIABLE, raising=False)
    assert zerogpu.gpu_seconds(tiny_recipe(10).to_json(), "text.txt", "out") == zerogpu.DEFAULT_MAX_GPU_S == 300
    assert zerogpu.max_minutes(10) == 4.5 and zerogpu.max_minutes(2) == 2  # 4.5 min + the margin: 300 s
    monkeypatch.setenv(zerogpu.MAX_GPU_S_VARIABLE, "120")  # an unauthenticated visitor's day
    assert zerogpu.max_minutes(10) == 1.5
    assert zerogpu.gpu_seconds(tiny_recipe(10).to_json(), "text.txt", "out") == 120
    for bad in ("ten", "-5", "1.5", "59"):
        monkeypatch.setenv(zerogpu.MAX_GPU_S_VARIABLE, bad)
        with pytest.raises(ValueError, match=zerogpu.MAX_GPU_S_VARIABLE):
            zerogpu.max_minutes(10)
    monkeypatch.setenv("SPACES_ZERO_GPU", "0")
    assert zerogpu.max_minutes(10) == 10  # off ZeroGPU the CPU has no such limit


@pytest.mark.parametrize("value, expected", [("", False), ("0", False), ("false", False), ("1", True), ("true", True)])
def test_zero_gpu_is_recognised_by_the_variable_the_hub_sets(monkeypatch, value, expected):
    monkeypatch.setenv("SPACES_ZERO_GPU", value)
    assert zerogpu.enabled() is expected


def gpu_job(tmp_path, minutes: float = 0.05) -> zerogpu.GpuTrainingJob:
    """A training of `tiny_recipe(minutes)` through the stand-in's `spaces.GPU`, in tmp_path/run."""
    (tmp_path / "run").mkdir()
    data = tmp_path / "run" / "text.txt"
    data.write_text(words(LATIN, 3000, 6), encoding="utf-8")
    return zerogpu.gpu_training()(tiny_recipe(minutes), data, tmp_path / "run")


@pytest.mark.slow
def test_a_refused_gpu_call_says_why_and_trains_nothing(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("SPACES_STAND_IN_MODE", "refuse")
    job = gpu_job(tmp_path)
    with pytest.raises(TrainingError) as refused:
        list(job.events())
    job.close()
    message = str(refused.value)
    assert message.startswith("ZeroGPU did not run the training: The requested GPU duration (33s) is larger")
    assert "2 minutes without signing in" in message  # what a visitor can do about it
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_gpu_call_cut_short_keeps_what_was_learned(stand_in, tmp_path, monkeypatch):
    """ZeroGPU ends the call mid-run: the run's checkpoint is scored and kept, as Stop would keep it."""
    monkeypatch.setenv("SPACES_STAND_IN_MODE", "abort")
    job = gpu_job(tmp_path, minutes=0.5)
    events = list(job.events())
    job.close()
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and kinds[-2:] == ["finishing", "done"] and "step" in kinds
    summary = events[-1]["summary"]
    assert summary["stopped"] and summary["interrupted"] == "GPU task aborted"
    assert summary["elapsed_s"] < 0.5 * 60 and math.isfinite(summary["val_loss"])
    model = load_model(tmp_path / "run")  # what the tab keeps and offers for download
    assert model.num_params() == summary["params"]
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_a_gpu_call_cut_short_before_any_checkpoint_says_nothing_was_kept(tmp_path):
    def preempted(config_json, data_path, out_dir):
        yield {"event": "start", "params": 1000, "vocab_size": 10, "minutes": 0.5, "device": "cuda"}
        yield {"event": "step", "step": 40, "loss": 2.5, "elapsed_s": 2.0, "progress": 0.07}
        raise RuntimeError("GPU task aborted\n(preempted)")

    job = zerogpu.GpuTrainingJob(preempted, tiny_recipe(0.5), tmp_path / "text.txt", tmp_path)
    events = job.events()
    assert [next(events)["event"], next(events)["event"]] == ["start", "step"]  # shown as they came
    with pytest.raises(TrainingError) as lost:
        next(events)
    assert str(lost.value).startswith(
        "ZeroGPU ended the training at step 40, before it saved anything: GPU task aborted. ZeroGPU gives each visitor"
    )


@pytest.mark.slow
def test_the_train_tab_reports_a_refused_gpu_call_and_the_queue_moves_on(stand_in, tmp_path, monkeypatch):
    models = VisitorModels(tmp_path / "models")
    job = zerogpu.gpu_training()
    assert calls(stand_in()) == [{"decorated": "train_on_gpu"}]  # at start-up, as ZeroGPU checks
    with gr.Blocks() as demo, gr.Tab("Train"):
        build_train_tab(demo, TrainSettings(0.05, 0.5, tiny_recipe, job=job), models)
    demo.queue()
    _, url, _ = demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    text = words(LATIN, 3000, 6)
    try:
        client = Client(url, verbose=False)
        monkeypatch.setenv("SPACES_STAND_IN_MODE", "refuse")
        with pytest.raises(AppError, match="ZeroGPU did not run the training: The requested GPU duration"):
            client.predict(text, 0.05, api_name="/train")
        monkeypatch.setenv("SPACES_STAND_IN_MODE", "succeed")  # the next training in the queue runs
        *_, val_loss, download = client.predict(text, 0.05, api_name="/train")
    finally:
        demo.close()
        models.close()
    assert val_loss < math.log(len(set(text))) and download.endswith(".zip")
    asked = round(60 * 0.05) + zerogpu.MARGIN_S
    assert calls(stand_in())[1:] == [{"called": "train_on_gpu", "duration": asked}] * 2


@pytest.mark.parametrize("zero_gpu", [True, False], ids=["zero-gpu", "cpu"])
def test_spaces_is_imported_before_torch_and_gradio_on_zero_gpu(stand_in, tmp_path, zero_gpu):
    """ZeroGPU's package must come before anything that may set CUDA up; the stand-in records what was
    imported before it and ends the process there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SPACES_STAND_IN_EXIT": "1"}
    env["SPACES_ZERO_GPU"] = "1" if zero_gpu else ""
    result = subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    if zero_gpu:
        assert result.returncode == 0 and stand_in() == [{"imported": True, "after": []}], result.stderr
    else:  # Gradio imports `spaces` by itself where it is installed, after itself and torch
        assert result.returncode == 0 and all(event["after"] for event in stand_in()), result.stderr


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
    assert calls(stand_in()) == ([{"decorated": "train_on_gpu"}] if zero_gpu else [])

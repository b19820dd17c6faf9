"""The Train tab's handlers (tinygpt.web.train_handlers) called directly, as plain functions: no
Gradio, no server. The tab's wiring through Gradio is tests/test_train_tab.py's."""

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT, tiny_recipe
from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.serving.generate import InputError
from tinygpt.training.data import load_text
from tinygpt.training.playground import VisitorModels
from tinygpt.web.train_handlers import NoModelError, PushError, TrainHandlers, TrainSettings


@pytest.fixture
def handlers(tmp_path):
    models = VisitorModels(tmp_path)
    yield TrainHandlers(TrainSettings(0.05, 0.5, tiny_recipe), models)
    models.close()


def test_the_handlers_import_no_gradio():
    code = "import sys, tinygpt.web.train_handlers; print('gradio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_session_trains_writes_with_its_model_and_forgets_it(handlers):
    updates = list(handlers.train(load_text(DEFAULT_DATA)[:20_000], 0.05, "session-a"))
    progress, curve, _, val_loss, download = updates[-1]
    assert "validation loss" in progress and val_loss > 0 and set(curve["split"]) == {"train", "validation"}
    assert "tinygpt-model/model.safetensors" in zipfile.ZipFile(download).namelist()
    texts = list(handlers.generate_trained("session-a", "ROMEO:", 30, 0.8))
    assert texts[-1].startswith("ROMEO:") and len(texts[-1]) == len("ROMEO:") + 30
    with pytest.raises(NoModelError):
        next(handlers.generate_trained("session-b", "ROMEO:", 30, 0.8))
    handlers.forget("session-a")
    with pytest.raises(NoModelError):
        handlers.push("session-a", "USER/mine")


def test_bad_input_is_refused_before_anything_runs(handlers):
    with pytest.raises(InputError, match="minutes"):
        next(handlers.train("some text " * 1000, 99, "session-a"))
    with pytest.raises(InputError):
        next(handlers.train("too short", 0.05, "session-a"))
    assert handlers.models.jobs == {}


def test_a_failed_push_is_one_line_naming_the_repo(handlers, tiny_model, monkeypatch):
    from tinygpt.files.checkpoint import save_model
    from tinygpt.hub import models as hub
    from tinygpt.training.playground import VisitorModel

    folder = handlers.models.folder("session-a")
    save_model(tiny_model, folder)
    handlers.models.keep("session-a", VisitorModel(folder, tiny_model, {}))
    monkeypatch.setattr(hub, "push", lambda *a: (_ for _ in ()).throw(OSError("no route to host\ndetails")))
    with pytest.raises(PushError, match=r"^could not push to 'USER/mine': no route to host$"):
        handlers.push("session-a", "USER/mine")

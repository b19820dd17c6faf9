"""`train.py --data` on any text: small files, foreign alphabets, Windows line endings; and a clear
one-line error for what cannot train (empty, not UTF-8, too short for the context)."""

import json
from dataclasses import asdict, replace

import pytest
from gradio_client import Client

import train as train_py
from tests.conftest import start_app, stop_app
from tinygpt.files.checkpoint import load_model
from tinygpt.model.config import GPTConfig, budget_recipe, nearest_budget
from tinygpt.model.tokenizer import CharTokenizer

# A few KB of French, Japanese and Chinese, with an emoji, written with Windows line endings.
LINES = ["Où est la bibliothèque ? À côté du café, répondit-elle.", "吾輩は猫である。名前はまだ無い。",
         "学而时习之，不亦说乎？", "Ça va très bien, merci ! 🙂"]  # fmt: skip  # noqa: RUF001 - real Chinese punctuation
TEXT = "\r\n".join(LINES * 40)
TINY = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
        "--max-iters", "3", "--eval-iters", "1", "--warmup-iters", "1", "--no-progress", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign")
    data = folder / "mine.txt"
    data.write_bytes(TEXT.encode("utf-8"))
    assert train_py.main(["--data", str(data), "--out", str(folder / "model"), *TINY]) == 0
    return folder / "model"


def test_a_foreign_alphabet_trains_with_its_own_vocabulary_and_unix_line_endings(foreign_model):
    vocab = json.loads((foreign_model / "config.json").read_text(encoding="utf-8"))["vocab"]
    assert vocab == "".join(sorted(set(TEXT.replace("\r\n", "\n"))))
    assert {"é", "猫", "说", "🙂", "\n"} <= set(vocab) and "\r" not in vocab
    model = load_model(foreign_model)
    assert CharTokenizer(model.config.vocab).encode("吾輩は猫") and model.config.vocab_size == len(vocab)


@pytest.mark.slow
def test_the_page_serves_a_model_of_another_alphabet(foreign_model, tmp_path):
    process, url = start_app(foreign_model, tmp_path / "app.log")
    try:
        text = Client(url, verbose=False).predict("吾輩は", 20, 0.8, api_name="/generate")
    finally:
        stop_app(process)
    assert text.startswith("吾輩は") and len(text) == 3 + 20
    assert set(text) <= set(load_model(foreign_model).config.vocab)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too little text"),
        ("À bientôt".encode("latin-1"), "not UTF-8 text"),
        (bytes(range(256)) * 8, "not UTF-8 text"),
        (TEXT[:900].encode("utf-8"), "too short for block_size 256: its validation split (the last 10%) has"),
    ],
    ids=["empty", "latin-1", "binary", "too-short"],
)
def test_what_cannot_train_is_one_clear_line(tmp_path, capsys, content, message):
    data = tmp_path / "bad.txt"
    data.write_bytes(content)
    assert train_py.main(["--data", str(data), "--out", str(tmp_path / "out"), "--max-iters", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_too_short_suggests_a_context_that_then_trains(tmp_path, capsys):
    data = tmp_path / "short.txt"
    data.write_text("To be, or not to be, that is the question.\n" * 5)  # 215 characters: 22 to validate
    assert train_py.main(["--data", str(data), "--out", str(tmp_path / "out"), *TINY, "--block-size", "64"]) == 2
    assert "use --block-size 21 or less" in capsys.readouterr().err
    assert train_py.main(["--data", str(data), "--out", str(tmp_path / "out"), *TINY, "--block-size", "21"]) == 0


def test_minutes_picks_the_nearest_preset_and_given_flags_override_it(tmp_path, capsys):
    data = tmp_path / "mine.txt"
    data.write_bytes(TEXT.encode("utf-8"))
    flags = ["--data", str(data), "--out", str(tmp_path / "out"), "--no-progress", "--threads", "1"]
    assert train_py.main([*flags, "--minutes", "0.02", "--block-size", "16", "--eval-iters", "1"]) == 0
    saved = load_model(tmp_path / "out").config
    printed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("recipe: "))
    assert json.loads(printed.removeprefix("recipe: ")) == {k: v for k, v in asdict(saved).items() if k != "vocab"}
    preset = budget_recipe(0.02)
    assert saved.minutes == 0.02 and saved.max_iters == 0 and saved.block_size == 16  # the flags given
    assert (saved.n_layer, saved.n_embd, saved.learning_rate) == (preset.n_layer, preset.n_embd, preset.learning_rate)


def test_a_budget_gets_the_preset_nearest_on_a_log_scale():
    assert [nearest_budget(m) for m in (0.1, 1, 2, 3, 7, 20, 50, 500)] == [1, 1, 1, 5, 5, 30, 30, 120]
    assert budget_recipe(3) == replace(budget_recipe(5), minutes=3)
    assert replace(budget_recipe(120), max_iters=GPTConfig().max_iters, minutes=0) == GPTConfig()  # the shipped one
    with pytest.raises(ValueError, match="above 0"):
        budget_recipe(0)

"""The page's Train tab: a visitor's text, a few minutes, a live loss curve and samples, then their own
model to write with, download or push. The work is done by tinygpt.playground; this is the wiring.

API (gradio_client): /train(text, minutes) streams (progress, curve, sample, validation loss, zip);
/generate_trained(prompt, max_new_tokens, temperature) writes with the session's trained model.
"""

from __future__ import annotations

import atexit
import html
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import huggingface_hub
import pandas as pd

from tinygpt import hub
from tinygpt.backends import TorchBackend
from tinygpt.checkpoint import load_model
from tinygpt.config import GPTConfig
from tinygpt.data import DEFAULT_DATA, load_text
from tinygpt.generate import MAX_NEW_TOKENS, MAX_TEMPERATURE, InputError, complete
from tinygpt.playground import (
    MAX_MINUTES,
    MAX_UPLOAD_BYTES,
    MIN_MINUTES,
    TrainingError,
    TrainingJob,
    VisitorModel,
    VisitorModels,
    check_minutes,
    check_text,
    pack,
    page_recipe,
    read_upload,
)
from tinygpt.tokenizer import CharTokenizer

UPDATE_INTERVAL_S = 0.5  # send the growing curve to the browser at most this often
STREAM_INTERVAL_S = 0.05  # and generated text, as the Write tab does
# Each kind of work has a concurrency group of its own. Gradio gives a group the lowest limit of the
# events in it, so an event sharing the Write tab's group would cap every generation of the page.
TRAIN_GROUP = "train"  # one training at a time: each takes a CPU for minutes
TRAINED_GROUP = "trained_model"  # generations with visitors' own models, each on a worker thread
TRAINED_GENERATIONS = 4


@dataclass(frozen=True)
class TrainSettings:
    """What the tab allows: the minutes slider's range and the recipe for a budget (tests pass a tiny one)."""

    min_minutes: float = MIN_MINUTES
    max_minutes: float = MAX_MINUTES
    recipe: Callable[[float], GPTConfig] = page_recipe
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    job: Callable[[GPTConfig, Path, Path], TrainingJob] = TrainingJob  # where a run happens (tinygpt.zerogpu)


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def progress_html(fraction: float, line: str) -> str:
    return (f'<div id="train-status"><progress value="{fraction:.3f}" max="1" style="width:100%"></progress>'
            f"<div>{html.escape(line)}</div></div>")  # fmt: skip


def no_model_error() -> gr.Error:
    return gr.Error("there is no trained model in this session yet: train one first", print_exception=False)


def build_train_tab(demo: gr.Blocks, settings: TrainSettings, models: VisitorModels | None = None) -> VisitorModels:
    """The tab's components and events, inside the caller's `with gr.Tab(...)`; `demo` gets the
    unload event that frees the session's model. The trained models are kept in `models` (returned)."""
    if models is None:
        models = VisitorModels()
        atexit.register(models.close)

    def train(text: str, minutes: float, request: gr.Request) -> Iterator[tuple]:
        """Train a model on `text` for `minutes`; streams (progress, loss curve, latest sample,
        validation loss, model zip). The final validation loss is exact, on the text's last 10%."""
        session = request.session_hash
        try:
            minutes = check_minutes(minutes, settings.min_minutes, settings.max_minutes)
            config = settings.recipe(minutes)
            text = check_text(text, config.block_size)
        except InputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        folder = models.folder(session)
        data = folder / "text.txt"
        data.write_text(text, encoding="utf-8")
        points: list[dict] = []
        latest_sample, line, fraction, sent = "", "starting the training process", 0.0, 0.0

        def update(val_loss: float | None = None, download: str | None = None) -> tuple:
            # Until the end there is no model: the session's previous one was dropped when this one began.
            curve = pd.DataFrame(points, columns=["step", "loss", "split"])
            return progress_html(fraction, line), curve, latest_sample, val_loss, download

        yield update()
        job = settings.job(config, data, folder)
        models.jobs[session] = job
        kept = False
        try:
            for event in job.events():
                kind = event["event"]
                if kind == "start":
                    line = f"{event['params'] / 1e6:.2f}M parameters, {event['vocab_size']} characters"
                elif kind == "step":
                    points.append({"step": event["step"], "loss": event["loss"], "split": "train"})
                    fraction = event["progress"]
                    line = (f"step {event['step']} · {clock(event['elapsed_s'])} of {clock(60 * minutes)} · "
                            f"training loss {event['loss']:.3f}")  # fmt: skip
                elif kind == "eval":
                    points.append({"step": event["step"], "loss": event["val_loss"], "split": "validation"})
                elif kind == "sample":
                    latest_sample = f"[step {event['step']}]\n{event['text']}"
                elif kind == "finishing":
                    line = f"stopped at step {event['step']}: scoring the model"
                if kind != "step" or time.perf_counter() - sent >= UPDATE_INTERVAL_S:
                    sent = time.perf_counter()
                    yield update()
            summary = event["summary"]
            if models.jobs.get(session) is not job:  # the page was closed meanwhile (unload dropped the job)
                return
            models.keep(session, VisitorModel(folder, load_model(folder).eval(), summary))
            kept = True
            how = "stopped" if summary.get("stopped") else "trained"
            fraction, line = 1.0, (f"{how}: {summary['steps']} steps in {clock(summary['elapsed_s'])}, "
                                   f"validation loss {summary['val_loss']:.4f}")  # fmt: skip
            yield update(summary["val_loss"], str(pack(folder)))
        except (InputError, TrainingError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        finally:
            if models.jobs.get(session) is job:
                del models.jobs[session]
            if not kept:  # it failed, or its visitor left (the page closed, the stream dropped): nobody will use it
                job.abandon()
            job.close()
            if not kept:
                shutil.rmtree(folder, ignore_errors=True)

    def stop(request: gr.Request) -> None:
        job = models.jobs.get(request.session_hash)
        if job:
            job.stop()

    def generate_trained(prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                         request: gr.Request = None) -> Iterator[str]:  # fmt: skip
        """Continue `prompt` with this session's trained model; streams the growing text."""
        visitor = models.get(request.session_hash)
        if visitor is None:
            raise no_model_error()
        tokenizer = CharTokenizer(visitor.model.config.vocab)
        try:
            text, steps = complete(TorchBackend(visitor.model), tokenizer, prompt, max_new_tokens, temperature)
        except InputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        sent = time.perf_counter()
        for step in steps:
            text += step.chars[0]
            if time.perf_counter() - sent >= STREAM_INTERVAL_S:
                sent = time.perf_counter()
                yield text
        yield text

    def push(repo_id: str, request: gr.Request) -> str:
        visitor = models.get(request.session_hash)
        if visitor is None:
            raise no_model_error()
        try:
            url = hub.push(visitor.folder, repo_id.strip())
        except Exception as err:  # a bad name, no permission, the Hub out of reach: one line
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise gr.Error(f"could not push to {repo_id!r}: {reason}", print_exception=False) from None
        return f"Pushed: {url}"

    def upload(path: str) -> str:
        try:
            return read_upload(path)
        except InputError as err:
            raise gr.Error(str(err), print_exception=False) from None

    gr.Markdown(
        "Train a small GPT from scratch on your own text and watch it learn: the loss falls and the "
        "samples turn from noise into words. Paste text, upload a `.txt` file or use the example, pick "
        "the minutes, press Train. One training runs at a time; others wait in the queue."
    )
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="Text to train on", lines=8, max_lines=8, elem_id="train-text",
                              placeholder="Paste a few thousand characters or more of any text")  # fmt: skip
            with gr.Row():
                upload_button = gr.UploadButton("Upload a .txt file", file_types=[".txt"], type="filepath")
                example = gr.Button("Use Tiny Shakespeare")
            start = min(max(settings.min_minutes, 1), settings.max_minutes)  # a minute, where allowed
            minutes = gr.Slider(settings.min_minutes, settings.max_minutes, value=start, step=settings.min_minutes,
                                label="Minutes")  # fmt: skip
            with gr.Row():
                train_button = gr.Button("Train", variant="primary")
                stop_button = gr.Button("Stop (keeps what was learned)", variant="stop")
            progress = gr.HTML(progress_html(0, "not started"), label="Progress", elem_id="train-progress")
            val_loss = gr.Number(label="Validation loss", interactive=False, elem_id="train-val-loss")
        with gr.Column():
            curve = gr.LinePlot(x="step", y="loss", color="split", label="Loss (nats per character)",
                                color_map={"train": "#f97316", "validation": "#2563eb"},
                                elem_id="loss-curve")  # fmt: skip
            sample = gr.Textbox(label="What it writes so far", lines=6, elem_id="train-sample")
    with gr.Accordion("Write with your model", open=True):
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="trained-prompt")
                max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=200, step=1, label="Characters to add")
                temperature = gr.Slider(0, MAX_TEMPERATURE, value=0.8, step=0.05, label="Temperature")
                write_button = gr.Button("Generate with my model", variant="primary")
            written = gr.Textbox(label="Your model's text", lines=10, elem_id="trained-output")
        download = gr.File(label="Your model (model.safetensors + config.json, zipped)", interactive=False,
                           height=80, elem_id="trained-zip")  # fmt: skip
        if huggingface_hub.get_token():  # pushing needs the server's own Hugging Face token
            with gr.Row():
                repo = gr.Textbox(label="Hub repo (USER/NAME)", scale=3)
                push_button = gr.Button("Push to the Hub", scale=1)
            pushed = gr.Markdown()
            push_button.click(push, repo, pushed, api_visibility="private")

    upload_button.upload(upload, upload_button, text, api_visibility="private")
    example.click(lambda: load_text(DEFAULT_DATA), None, text, api_visibility="private")
    # One training at a time (the queue shows the others their place); Stop is answered at once.
    train_button.click(train, [text, minutes], [progress, curve, sample, val_loss, download], api_name="train",
                       concurrency_limit=1, concurrency_id=TRAIN_GROUP, show_progress="minimal",
                       show_progress_on=[progress])  # fmt: skip
    stop_button.click(stop, None, None, concurrency_limit=None, api_visibility="private")
    write_button.click(generate_trained, [prompt, max_new_tokens, temperature], written, api_name="generate_trained",
                       concurrency_limit=TRAINED_GENERATIONS, concurrency_id=TRAINED_GROUP)  # fmt: skip

    def forget(request: gr.Request) -> None:  # the visitor closed or reloaded the page
        models.drop(request.session_hash)

    demo.unload(forget)
    return models

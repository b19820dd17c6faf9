"""The page's Train tab: a visitor's text, a few minutes, a live loss curve and samples, then their own
model to write with, download or push. This is the layout and the wiring; what each button does is
tinygpt.web.train_handlers (testable without Gradio), the training tinygpt.training.playground.

API (gradio_client): /train(text, minutes) streams (progress, curve, sample, validation loss, zip);
/generate_trained(prompt, max_new_tokens, temperature) writes with the session's trained model.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Iterator

import gradio as gr
import huggingface_hub

from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.serving.generate import MAX_NEW_TOKENS, MAX_TEMPERATURE, InputError
from tinygpt.training.data import load_text
from tinygpt.training.playground import TrainingError, VisitorModels
from tinygpt.web.train_handlers import PushError, TrainHandlers, TrainSettings, progress_html

# Each kind of work has a concurrency group of its own. Gradio gives a group the lowest limit of the
# events in it, so an event sharing the Write tab's group would cap every generation of the page.
TRAIN_GROUP = "train"  # one training at a time: each takes a CPU for minutes
TRAINED_GROUP = "trained_model"  # generations with visitors' own models, each on a worker thread
TRAINED_GENERATIONS = 4


@contextlib.contextmanager
def shown_as_messages() -> Iterator[None]:
    """The visitor's errors as a message on the page (and one line for an API client), not a stack trace."""
    try:
        yield
    except (InputError, TrainingError, PushError) as err:
        raise gr.Error(str(err), print_exception=False) from None


def build_train_tab(demo: gr.Blocks, settings: TrainSettings, models: VisitorModels | None = None) -> VisitorModels:
    """The tab's components and events, inside the caller's `with gr.Tab(...)`; `demo` gets the
    unload event that frees the session's model. The trained models are kept in `models` (returned)."""
    if models is None:
        models = VisitorModels()
        atexit.register(models.close)
    handlers = TrainHandlers(settings, models)

    def train(text: str, minutes: float, request: gr.Request) -> Iterator[tuple]:
        """Train a model on `text` for `minutes`; streams (progress, loss curve, latest sample,
        validation loss, model zip). The final validation loss is exact, on the text's last 10%."""
        with shown_as_messages():
            yield from handlers.train(text, minutes, request.session_hash)

    def stop(request: gr.Request) -> None:
        handlers.stop(request.session_hash)

    def generate_trained(prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                         request: gr.Request = None) -> Iterator[str]:  # fmt: skip
        """Continue `prompt` with the model the visitor's session trained; streams the growing text."""
        with shown_as_messages():
            yield from handlers.generate_trained(request.session_hash, prompt, max_new_tokens, temperature)

    def push(repo_id: str, request: gr.Request) -> str:
        with shown_as_messages():
            return handlers.push(request.session_hash, repo_id)

    def upload(path: str) -> str:
        with shown_as_messages():
            return handlers.upload(path)

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
        handlers.forget(request.session_hash)

    demo.unload(forget)
    return models

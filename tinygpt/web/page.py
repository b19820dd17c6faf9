"""The page: the Write tab (prompt, settings, the streaming text and the inside view), the Train tab
(tinygpt.web.train_tab) and the Model tab (the weights' card and loss curve), and the /generate API.
Every generation joins the batching engine (tinygpt.serving.engine)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import gradio as gr
import httpx

from tinygpt.files.checkpoint import CARD_FILE
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving.engine import Engine
from tinygpt.serving.generate import MAX_NEW_TOKENS, MAX_SEED, MAX_TEMPERATURE, InputError, start
from tinygpt.web.held import add_held_api
from tinygpt.web.inside import Trace, candidates_at, inside_view
from tinygpt.web.session_state_patch import start_sessions_lean
from tinygpt.web.train_handlers import TrainSettings
from tinygpt.web.train_tab import build_train_tab

STREAM_INTERVAL_S = 0.05  # send the growing text to the browser at most this often
QUEUE_SIZE = 64  # waiting requests beyond this get "Queue is full" at once instead of a long wait
EXAMPLES = ["ROMEO:\n", "To be, or not to be", "First Citizen:\n", "KING HENRY:\nNow, lords,", "O Romeo, Romeo!"]
# System fonts only, so the page looks right without reaching Google Fonts.
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"],
)


def make_run(engine: Engine) -> Callable[..., AsyncIterator[tuple[str, Trace | None]]]:
    """Generation shared by the page and the API: yields (text so far, trace) about every 50 ms; the
    trace (for the page's "inside the model" view) is None when not kept.

    Every run joins the engine's batch; closing the iterator (Stop, a closed tab) frees its place.
    Async, so Gradio runs it on its event loop: a crowd's waiting streams hold no threads.
    """
    tokenizer = CharTokenizer(engine.decoder.config.vocab)

    async def run(
        prompt, max_new_tokens, temperature, top_k, top_p, seed, keep_trace: bool = True
    ) -> AsyncIterator[tuple[str, Trace | None]]:
        try:
            text, sequences = start(tokenizer, prompt, max_new_tokens, temperature, seed, top_k, top_p)
        except InputError as err:  # shown to the person (or API client) as a message, not a stack trace
            raise gr.Error(str(err), print_exception=False) from None
        trace = Trace(text, tokenizer.vocab) if keep_trace else None
        # Closed with this generator (Gradio closes it on Stop or a closed tab): the engine then drops it.
        async with contextlib.aclosing(engine.generate(sequences[0], STREAM_INTERVAL_S)) as stream:
            async for tokens in stream:
                chars = [tokenizer.vocab[token.token] for token in tokens]
                text += "".join(chars)
                if trace is not None:
                    trace.add(chars, [token.logits for token in tokens])
                yield text, trace

    return run


def make_generate(engine: Engine) -> Callable[..., AsyncIterator[str]]:
    """The /generate API: the same generation, text only (no trace is kept: nobody would see it)."""
    run = make_run(engine)

    async def generate(
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> AsyncIterator[str]:
        """Continue `prompt` by exactly `max_new_tokens` characters; streams the growing text.

        temperature 0 is greedy; top_k 0 and top_p 1 turn those filters off; a seed makes it repeatable.
        """
        texts = run(prompt, max_new_tokens, temperature, top_k, top_p, seed, keep_trace=False)
        async with contextlib.aclosing(texts):
            async for text, _ in texts:
                yield text

    return generate


def model_card_text(folder: Path) -> str:
    """The weights' model card without its YAML front matter, or a note that there is none."""
    card = folder / CARD_FILE
    if not card.is_file():
        return "This model has no card (README.md) in its folder."
    text = card.read_text(encoding="utf-8")
    if text.startswith("---\n"):
        text = text.split("\n---\n", 1)[-1]
    return text


def build_demo(engine: Engine, folder: Path | None = None, training: TrainSettings | None = None) -> gr.Blocks:
    """The page: Write, Train (with `training`; tinygpt.web.train_tab) and Model."""
    run = make_run(engine)
    model = engine.decoder.backend.model
    n_params = model.num_params() / 1e6

    async def write(prompt, max_new_tokens, temperature, top_k, top_p, seed, random_seed):
        if random_seed or seed is None:
            seed = random.randint(0, MAX_SEED)  # shown in the seed box, so the result can be reproduced
        async with contextlib.aclosing(run(prompt, max_new_tokens, temperature, top_k, top_p, seed)) as texts:
            async for text, trace in texts:
                yield text, seed, trace

    with gr.Blocks(title="Tiny_GPT") as demo:
        gr.Markdown(
            "# Tiny_GPT\n"
            f"A {n_params:.1f}M-parameter character-level GPT, trained from scratch on Tiny Shakespeare. "
            "Type the start of some text and it writes the next characters, one at a time."
        )
        trace = gr.State(None)
        with gr.Tab("Write"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", lines=5, placeholder="ROMEO:\n", value=EXAMPLES[0])
                    max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=300, step=1, label="Characters to add")
                    temperature = gr.Slider(
                        0, MAX_TEMPERATURE, value=0.8, step=0.05, label="Temperature",
                        info="0 always picks the likeliest character; higher is more surprising",
                    )  # fmt: skip
                    with gr.Accordion("Advanced", open=False):
                        top_k = gr.Slider(0, model.config.vocab_size, value=0, step=1, label="Top-k",
                                          info="sample only from the k likeliest characters (0: all)")  # fmt: skip
                        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p",
                                          info="sample only from the likeliest characters that make up p of the "
                                          "probability (1: all)")  # fmt: skip
                        with gr.Row():
                            random_seed = gr.Checkbox(value=True, label="Random seed")
                            seed = gr.Number(label="Seed (the last one used)", value=None, precision=0, minimum=0,
                                             maximum=MAX_SEED)  # fmt: skip
                    with gr.Row():
                        button = gr.Button("Generate", variant="primary")
                        stop = gr.Button("Stop", variant="stop")
                    gr.Examples(EXAMPLES, inputs=prompt, label="Try a prompt")
                output = gr.Textbox(label="Autocompleted text", lines=18, buttons=["copy"])
            with gr.Accordion("Inside the model", open=True):
                gr.Markdown(
                    "Each new character is coloured by the probability the model gave it: the stronger the "
                    "red, the surer it was; the stronger the blue, the bigger the surprise. "
                    "Click a character to see the ten characters it weighed there."
                )
                with gr.Row():
                    confidence = gr.HighlightedText(
                        label="Confidence", show_legend=False, scale=3, elem_id="confidence"
                    )
                    candidates = gr.Label(label="Top-10 candidates", num_top_classes=10, scale=1, elem_id="candidates")
        models = None
        if training:
            with gr.Tab("Train"):
                models = build_train_tab(demo, training)
        with gr.Tab("Model"):
            gr.Markdown(model_card_text(folder) if folder else "")
            curve = folder / "loss_curve.png" if folder else None
            if curve and curve.is_file():
                gr.Image(str(curve), label="Training and validation loss", show_label=True, interactive=False)
            gr.Markdown(
                "## Dataset and training your own\n"
                "Tiny Shakespeare: 1,115,394 characters of Shakespeare's plays (Karpathy's char-rnn "
                "`input.txt`, in `data/`); the first 90% trains, the last 10% validates. To train on your "
                "own text, on a laptop CPU:\n\n"
                "```bash\npython train.py --data my_text.txt --out runs/mine   # Ctrl-C saves; --resume "
                "continues\npython app.py --model runs/mine\n```"
            )
            with gr.Accordion("Configuration (config.json)", open=False):
                gr.JSON({k: v for k, v in vars(model.config).items() if k != "vocab"})
        # Up to max_batch generations run at once (concurrency group "model"), decoded together by
        # the engine; the others wait in Gradio's bounded queue.
        event = button.click(
            write,
            inputs=[prompt, max_new_tokens, temperature, top_k, top_p, seed, random_seed],
            outputs=[output, seed, trace],
            concurrency_limit=engine.max_batch,
            concurrency_id="model",
            api_visibility="private",
        )
        event.then(inside_view, inputs=trace, outputs=[confidence, candidates], api_visibility="private")
        stop.click(None, cancels=[event])
        confidence.select(candidates_at, inputs=trace, outputs=candidates, api_visibility="private")
        gr.api(make_generate(engine), api_name="generate", concurrency_limit=engine.max_batch, concurrency_id="model")
        add_held_api(engine, models)  # /held: counts for load tests (tinygpt.web.held)
    start_sessions_lean(demo)  # an API call is a new session: it should not copy the whole page's config
    return demo


def share_service_reachable(timeout_s: float = 5.0) -> bool:
    """Whether Gradio's share service answers. Offline, Gradio's own attempt ends in instructions for
    downloading its tunnel program, which hide the real problem: there is no internet."""
    from gradio.networking import GRADIO_API_SERVER

    try:
        httpx.head(GRADIO_API_SERVER, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True

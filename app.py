"""The Tiny_GPT demo: type the start of a line, pick how much to add and how adventurous, press Generate.

python app.py                       # http://127.0.0.1:7860
python app.py --share               # also print a public gradio.live link
python app.py --host 0.0.0.0 --port 8080 --weights runs/mine
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # works offline; no calls home

import gradio as gr

from tinygpt.checkpoint import WEIGHTS_DIR, load_model
from tinygpt.generate import MAX_NEW_TOKENS, MAX_TEMPERATURE, InputError, complete
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer

STREAM_INTERVAL_S = 0.05  # send the growing text to the browser at most this often
EXAMPLES = ["ROMEO:\nBut soft, what light", "KING HENRY:\nNow, lords,", "To be, or not to be", "First Citizen:\n"]
# System fonts only, so the page looks right without reaching Google Fonts.
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"],
)


def make_generate(model: GPT) -> Callable[..., Iterator[str]]:
    """The function behind the Generate button and the /generate API."""
    tokenizer = CharTokenizer(model.config.vocab)

    def generate(
        prompt: str, max_new_tokens: float = 200, temperature: float = 0.8, seed: float | None = None
    ) -> Iterator[str]:
        """Continue `prompt` by `max_new_tokens` characters; yields the growing text."""
        try:
            if seed is not None and seed != int(seed):
                raise InputError(f"the seed must be a whole number, not {seed}")
            pieces = complete(
                model, tokenizer, prompt, max_new_tokens, temperature, None if seed is None else int(seed)
            )
            text = next(pieces)  # the cleaned prompt; bad input raises here, before any output
        except InputError as err:
            raise gr.Error(str(err)) from None
        last_sent = time.perf_counter()
        for piece in pieces:
            text += piece
            if time.perf_counter() - last_sent >= STREAM_INTERVAL_S:
                last_sent = time.perf_counter()
                yield text
        yield text

    return generate


def build_demo(model: GPT) -> gr.Blocks:
    generate = make_generate(model)
    n_params = model.num_params() / 1e6
    with gr.Blocks(title="Tiny_GPT") as demo:
        gr.Markdown(
            "# Tiny_GPT\n"
            f"A {n_params:.1f}M-parameter character-level GPT, trained from scratch on Tiny Shakespeare. "
            "Type the start of some text and it writes the next characters, one at a time."
        )
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=5, placeholder="ROMEO:\n", value=EXAMPLES[0])
                max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=300, step=1, label="Characters to add")
                temperature = gr.Slider(
                    0, MAX_TEMPERATURE, value=0.8, step=0.05, label="Temperature",
                    info="0 always picks the likeliest character; higher is more surprising",
                )  # fmt: skip
                with gr.Accordion("Advanced", open=False):
                    seed = gr.Number(label="Seed (empty: random)", value=None, precision=0)
                button = gr.Button("Generate", variant="primary")
            output = gr.Textbox(label="Autocompleted text", lines=18, buttons=["copy"])
        gr.Examples(EXAMPLES, inputs=prompt, label="Try a prompt")
        # One generation at a time (queued): the model's KV cache is a single buffer.
        button.click(
            generate,
            inputs=[prompt, max_new_tokens, temperature, seed],
            outputs=output,
            api_name="generate",
            concurrency_limit=1,
        )
    return demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Hugging Face Spaces (and Docker setups) pass the address through Gradio's own variables.
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    parser.add_argument("--host", default=host, help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--share", action="store_true", help="create a temporary public link through gradio.live")
    parser.add_argument(
        "--weights", default=str(WEIGHTS_DIR), help="weights folder, or hf://USER/NAME on the Hugging Face Hub"
    )
    args = parser.parse_args(argv)
    try:
        model = load_model(args.weights)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    build_demo(model).launch(server_name=args.host, server_port=args.port, share=args.share, theme=THEME)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Tiny_GPT demo: type the start of a line, pick how much to add and how adventurous, press Generate.

python app.py                       # http://127.0.0.1:7860
python app.py --share               # also print a public gradio.live link
python app.py --host 0.0.0.0 --port 8080 --model runs/mine     # or --model USER/NAME on the Hub
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # cold start is measured from here: before the heavy imports

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import AsyncIterator, Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # works offline; no calls home
# After every request Gradio summarises its last 10,000 requests in a pandas table, for a monitoring
# dashboard that is off here: milliseconds of CPU per request once a page has served thousands.
# Once per million requests instead.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000000")
# PyTorch's idle OpenMP workers sleep instead of spinning after each small operation of the decode
# loop, leaving the second core to the C++ step's second thread (read when torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr  # noqa: E402
import httpx  # noqa: E402
import torch  # noqa: E402

from tinygpt import zerogpu  # noqa: E402
from tinygpt.backends import BACKENDS, CppBackend, TorchBackend, extension, load_backend  # noqa: E402
from tinygpt.checkpoint import CARD_FILE, WEIGHTS_DIR, load_model, resolve  # noqa: E402
from tinygpt.cpus import usable_cpus  # noqa: E402
from tinygpt.engine import DEFAULT_MAX_BATCH, Engine  # noqa: E402
from tinygpt.generate import MAX_NEW_TOKENS, MAX_SEED, MAX_TEMPERATURE, InputError, start  # noqa: E402
from tinygpt.gradio_sessions import start_sessions_lean  # noqa: E402
from tinygpt.held import add_held_api  # noqa: E402
from tinygpt.model import GPT  # noqa: E402
from tinygpt.playground import TrainingJob  # noqa: E402
from tinygpt.tokenizer import CharTokenizer  # noqa: E402
from tinygpt.train_tab import TrainSettings, build_train_tab  # noqa: E402

STREAM_INTERVAL_S = 0.05  # send the growing text to the browser at most this often
QUEUE_SIZE = 64  # waiting requests beyond this get "Queue is full" at once instead of a long wait
EXAMPLES = ["ROMEO:\n", "To be, or not to be", "First Citizen:\n", "KING HENRY:\nNow, lords,", "O Romeo, Romeo!"]
# System fonts only, so the page looks right without reaching Google Fonts.
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"],
)
VISIBLE = {"\n": "⏎", " ": "␣", "\t": "⇥"}  # how whitespace candidates are shown in the chart


@dataclass
class Trace:
    """What one generation produced, kept for the "inside the model" view."""

    prompt: str
    vocab: str
    chars: list[str] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # (n, V) blocks: the model's logits per new character

    def add(self, chars: list[str], logits: list[torch.Tensor]) -> None:
        """New characters and the (V,) logits of each. They are copied into one block: the engine's
        rows are views of its whole batch's logits, which the session would otherwise keep alive."""
        self.chars += chars
        self.logits.append(torch.stack(logits))


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


def inside_view(trace: Trace | None, position: int | None = None) -> tuple[list, dict[str, float]]:
    """The new text coloured by the probability the model gave each character, and the 10 likeliest
    candidates the model weighed at one position (default: the last character)."""
    if trace is None or not trace.chars:
        return [], {}
    probs = torch.cat(trace.logits).float().softmax(dim=-1)  # computed only when the view is shown
    chosen = probs.gather(1, torch.tensor([[trace.vocab.index(c)] for c in trace.chars]))[:, 0].tolist()
    # HighlightedText colours scores in [-1, 1] by sign and size: 2p - 1 puts p = 0.5 at no colour.
    spans = [(trace.prompt, None), *((c, round(2 * p - 1, 3)) for c, p in zip(trace.chars, chosen, strict=True))]
    position = len(trace.chars) - 1 if position is None else min(max(position, 0), len(trace.chars) - 1)
    top = probs[position].topk(min(10, probs.size(1)))
    shown = [VISIBLE.get(trace.vocab[i], trace.vocab[i]) for i in top.indices.tolist()]
    return spans, dict(zip(shown, top.values.tolist(), strict=True))


def candidates_at(trace: Trace | None, evt: gr.SelectData) -> dict[str, float]:
    """The top-10 chart for the character clicked in the confidence view (span 0 is the prompt)."""
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return inside_view(trace, index - 1)[1] if index else gr.skip()


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
    """The page: Write, Train (with `training`; tinygpt.train_tab) and Model."""
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
        add_held_api(engine, models)  # /held: counts for load tests (tinygpt.held)
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


def resident_memory_mb() -> float:
    """This process's resident memory (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def switch_to_cpp(engine: Engine, model: GPT, threads: int) -> None:
    """Build the C++ decode step (or find it built) and decode with it, on `threads` threads, from then
    on; log either way."""
    started = time.perf_counter()
    print("building the C++ decode step in the background ...", flush=True)
    with contextlib.suppress(AttributeError, OSError):  # Linux: this thread and the compiler it starts
        os.setpriority(os.PRIO_PROCESS, 0, 10)  # yield the CPU to the page while they work
    if extension() is None:  # it printed why
        print("staying on PyTorch float32", flush=True)
        return
    backend = CppBackend(model, threads)
    engine.use(backend)
    ready_s = time.perf_counter() - started
    print(f"switched to the C++ decode step ({backend.threads} threads; ready after {ready_s:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Hugging Face Spaces (and Docker setups) pass the address through Gradio's own variables.
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    parser.add_argument("--host", default=host, help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--share", action="store_true", help="create a temporary public link through gradio.live")
    # A Space picks its model with a variable (Settings > Variables): TINYGPT_MODEL=USER/NAME.
    model_name = os.environ.get("TINYGPT_MODEL", str(WEIGHTS_DIR))
    parser.add_argument("--model", default=model_name, help="weights folder, or USER/NAME of a Hugging Face Hub repo")
    parser.add_argument("--weights", dest="model", help=argparse.SUPPRESS)  # the old name of --model
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="how forward passes run: auto (the C++ "
                        "step once it is built, PyTorch float32 until then), torch (float32), int8 (int8 weights), "
                        "cpp (the C++ step: float32, float16 KV cache; built in the background once the page is "
                        "up)")  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="generations decoded together (1: one at a time); others wait in the queue")  # fmt: skip
    # A public Space can turn the Train tab off with a variable: TINYGPT_NO_TRAIN=1.
    no_train = os.environ.get("TINYGPT_NO_TRAIN", "") not in ("", "0")
    parser.add_argument("--no-train", action="store_true", default=no_train,
                        help="no Train tab (also the TINYGPT_NO_TRAIN=1 environment variable)")  # fmt: skip
    parser.add_argument("--max-train-minutes", type=float, default=TrainSettings.max_minutes,
                        help="the Train tab's longest training, in minutes (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.max_batch < 1:
        parser.error(f"--max-batch must be at least 1, not {args.max_batch}")
    if args.max_train_minutes < TrainSettings.min_minutes:
        parser.error(f"--max-train-minutes must be at least {TrainSettings.min_minutes}")
    cpus = usable_cpus()  # the CPUs this container may use, not its host's
    # The C++ step takes ~40 s to compile on a fresh machine: serve with PyTorch meanwhile.
    compile_later = args.backend in ("auto", "cpp")
    # With the C++ step, what runs on PyTorch here is small (a batch's sampling: 32 rows of 65), and
    # one thread does it faster than two, the second woken for each operation; the step has threads
    # of its own, one per CPU (until it is built, PyTorch decodes on one thread too). The torch and
    # int8 backends run on PyTorch's threads.
    torch.set_num_threads(1 if compile_later else cpus)
    try:
        folder = resolve(args.model)
        model = load_model(folder)
        backend = TorchBackend(model) if compile_later else load_backend(model, args.backend)
    except ValueError as err:  # missing, corrupt or inconsistent files, the Hub out of reach, int8 on this shape
        print(f"error: {err}", file=sys.stderr)
        return 2
    engine = Engine(backend, args.max_batch)
    training = None
    if not args.no_train:  # on a ZeroGPU Space each training runs on a GPU slice (tinygpt.zerogpu)
        job = zerogpu.gpu_training() if zerogpu.enabled() else TrainingJob
        training = TrainSettings(max_minutes=args.max_train_minutes, job=job)
    demo = build_demo(engine, folder, training)
    share = args.share and share_service_reachable()
    if args.share and not share:
        print("warning: --share needs the internet, and gradio.live cannot be reached: serving the local URL only",
              file=sys.stderr)  # fmt: skip
    demo.queue(max_size=QUEUE_SIZE)
    demo.launch(server_name=args.host, server_port=args.port, share=share, theme=THEME, prevent_thread_lock=True,
                max_file_size=training.max_upload_bytes if training else None)  # fmt: skip
    # What exists now (the model, Gradio's page: ~400k objects) lives as long as the server: out of the
    # garbage collector's sight, whose full passes over it stopped every stream for ~0.2 s each.
    gc.freeze()
    print(
        f"ready: {model.num_params() / 1e6:.2f}M parameters from {folder}, decoding with {engine.backend.name}"
        f"{' until the C++ step is built' if compile_later else ''} (PyTorch threads: {torch.get_num_threads()}), "
        f"up to {args.max_batch} generations at once; "
        f"cold start {time.perf_counter() - STARTED:.1f} s (process start to page served), "
        f"resident memory {resident_memory_mb():.0f} MB",
        flush=True,
    )
    if compile_later:
        threading.Thread(target=switch_to_cpp, args=(engine, model, cpus), daemon=True).start()
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())

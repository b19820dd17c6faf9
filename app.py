"""The Tiny_GPT demo: type the start of a line, pick how much to add and how adventurous, press Generate.

python app.py                       # http://127.0.0.1:7860
python app.py --share               # also print a public gradio.live link
python app.py --host 0.0.0.0 --port 8080 --model runs/mine     # or --model USER/NAME on the Hub

The page itself is tinygpt.web.page; this file reads the options, loads the model and starts the server.
"""

from __future__ import annotations

import os

# Process settings: the libraries read these once, when first imported, so they are set here, before
# any other import.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # works offline; no calls home
# After every request Gradio summarises its last 10,000 requests in a pandas table, for a monitoring
# dashboard that is off here: milliseconds of CPU per request once a page has served thousands.
# Once per million requests instead.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000000")
# PyTorch's idle OpenMP workers sleep instead of spinning after each small operation of the decode
# loop, leaving the second core to the C++ step's second thread (read when torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# On a ZeroGPU Space, `spaces` patches how PyTorch sets CUDA up, so it is imported before torch and
# Gradio (tinygpt.hub.zerogpu.enabled reads the same variable).
if os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("", "0", "false"):
    import spaces  # noqa: F401

import argparse
import gc
import sys
import threading

import torch

from tinygpt.files.checkpoint import WEIGHTS_DIR, load_model, resolve
from tinygpt.hub import zerogpu
from tinygpt.serving import http_api
from tinygpt.serving.backends import BACKENDS, TorchBackend, load_backend
from tinygpt.serving.cpus import usable_cpus
from tinygpt.serving.engine import DEFAULT_MAX_BATCH, Engine
from tinygpt.serving.server import resident_memory_mb, seconds_since_start, switch_to_cpp
from tinygpt.training.playground import TrainingJob
from tinygpt.web.page import QUEUE_SIZE, STREAM_INTERVAL_S, THEME, build_demo, share_service_reachable
from tinygpt.web.train_handlers import TrainSettings


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
    parser.add_argument("--weights", dest="model", help=argparse.SUPPRESS)  # another name for --model
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="how forward passes run: auto (the C++ "
                        "step once it is built, PyTorch float32 until then), torch (float32), int8 (int8 weights), "
                        "cpp (the C++ step: float32 weights, int8 KV cache; built in the background once the page "
                        "is up)")  # fmt: skip
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
    # The C++ step takes tens of seconds to compile on a fresh machine (benchmarks/cold_start.py): serve
    # with PyTorch meanwhile.
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
    if not args.no_train:  # on a ZeroGPU Space each training runs on a GPU slice (tinygpt.hub.zerogpu)
        job = zerogpu.gpu_training() if zerogpu.enabled() else TrainingJob
        training = TrainSettings(max_minutes=zerogpu.max_minutes(args.max_train_minutes), job=job)
    demo = build_demo(engine, folder, training)
    share = args.share and share_service_reachable()
    if args.share and not share:
        print("warning: --share needs the internet, and gradio.live cannot be reached: serving the local URL only",
              file=sys.stderr)  # fmt: skip
    api = http_api.routes(engine, http_api.model_name(args.model), QUEUE_SIZE, STREAM_INTERVAL_S)  # /v1/..., /health
    demo.queue(max_size=QUEUE_SIZE)
    demo.launch(server_name=args.host, server_port=args.port, share=share, theme=THEME, prevent_thread_lock=True,
                max_file_size=training.max_upload_bytes if training else None, app_kwargs={"routes": api})  # fmt: skip
    # What exists now (the model, Gradio's page: ~400k objects) lives as long as the server: out of the
    # garbage collector's sight, whose full passes over it would pause every stream (benchmarks/load.py).
    gc.freeze()
    print(
        f"ready: {model.num_params() / 1e6:.2f}M parameters from {folder}, decoding with {engine.backend.name}"
        f"{' until the C++ step is built' if compile_later else ''} (PyTorch threads: {torch.get_num_threads()}), "
        f"up to {args.max_batch} generations at once; "
        f"cold start {seconds_since_start():.1f} s (process start to page served), "
        f"resident memory {resident_memory_mb():.0f} MB",
        flush=True,
    )
    if compile_later:
        threading.Thread(target=switch_to_cpp, args=(engine, model, cpus), daemon=True).start()
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Train tab, measured as a visitor uses it: a real `python app.py`, the /train API on the bundled text.

    python benchmarks/train_tab.py --minutes 1 5      # the validation loss after each budget
    python benchmarks/train_tab.py --pairs 4          # the Write tab's speed, idle and while a training runs

--minutes: for each budget, a training of that many minutes on Tiny Shakespeare through /train, and
/generate requests one after another beside it; one JSON line each: the validation loss the page
reports, the steps, and the Write tab's speed (characters per second of a --chars request) idle
(before and after) and while training (medians).

--pairs: on a shared machine the load drifts, so idle and busy are measured in alternation: each pair
is /generate requests for --window seconds with the server idle, then for the length of a training of
--window seconds. One JSON line with the medians and each pair's ratio.

Every line gives the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gradio_client import Client
from load import load_average, start_server, stop_server  # benchmarks/load.py; it puts the repo on sys.path

from tinygpt.files.checkpoint import WEIGHTS_DIR
from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.serving.engine import DEFAULT_MAX_BATCH


def write_speed(client: Client, chars: int) -> float:
    """Characters per second of one /generate request, as its client sees it."""
    started = time.perf_counter()
    client.predict("ROMEO:\n", chars, 0.8, 0, 1.0, 1, api_name="/generate")
    return chars / (time.perf_counter() - started)


def writing_for(client: Client, chars: int, seconds: float) -> list[float]:
    deadline = time.perf_counter() + seconds
    speeds = [write_speed(client, chars)]
    while time.perf_counter() < deadline:
        speeds.append(write_speed(client, chars))
    return speeds


def writing_while_training(writer: Client, trainer: Client, text: str, minutes: float, chars: int):
    """Write speeds while a training of `minutes` runs, and the training's final outputs."""
    job = trainer.submit(text, minutes, api_name="/train")
    while len(job.outputs()) < 2 and not job.done():  # wait for the first steps: training has begun
        time.sleep(0.5)
    busy = []
    while not job.done():
        busy.append(write_speed(writer, chars))
    return busy, job.result()


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="*", default=[])
    parser.add_argument("--pairs", type=int, default=0)
    parser.add_argument("--window", type=float, default=30, help="seconds of each half of a pair")
    parser.add_argument("--chars", type=int, default=1000, help="characters per /generate request")
    parser.add_argument("--model", default=str(WEIGHTS_DIR))
    args = parser.parse_args()
    text = DEFAULT_DATA.read_text(encoding="utf-8")
    log = Path(tempfile.mkdtemp(prefix="train-tab-bench-")) / "app.log"
    process, url, ready = start_server(args.model, DEFAULT_MAX_BATCH, log)
    print(ready, file=sys.stderr)
    try:
        writer, trainer = Client(url, verbose=False), Client(url, verbose=False)
        for minutes in args.minutes:
            load_before = load_average()
            idle = [write_speed(writer, args.chars) for _ in range(5)]
            busy, (progress, _, sample, val_loss, _) = writing_while_training(
                writer, trainer, text, minutes, args.chars
            )
            idle += [write_speed(writer, args.chars) for _ in range(5)]
            record = {
                "minutes": minutes,
                "val_loss": val_loss,
                "progress": progress.split("<div>")[-1].split("</div>")[0],
                "write_chars_per_s_idle": median(idle),
                "write_chars_per_s_while_training": median(busy),
                "chars_per_request": args.chars,
                "load_average_before": load_before,
                "load_average_after": load_average(),
                "last_sample": sample,
            }
            print(json.dumps(record, ensure_ascii=False), flush=True)
        if args.pairs:
            load_before, idle, busy, ratios = load_average(), [], [], []
            for _ in range(args.pairs):
                idle_now = writing_for(writer, args.chars, args.window)
                busy_now, _ = writing_while_training(writer, trainer, text, args.window / 60, args.chars)
                idle, busy = idle + idle_now, busy + busy_now
                ratios.append(round(statistics.median(busy_now) / statistics.median(idle_now), 2))
            record = {
                "pairs": args.pairs,
                "window_s": args.window,
                "write_chars_per_s_idle": median(idle),
                "write_chars_per_s_while_training": median(busy),
                "ratio_per_pair": ratios,
                "requests": [len(idle), len(busy)],
                "chars_per_request": args.chars,
                "load_average_before": load_before,
                "load_average_after": load_average(),
            }
            print(json.dumps(record), flush=True)
    finally:
        stop_server(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Train tab, measured as a visitor uses it: a real `python app.py`, the /train API on the bundled text.

    python benchmarks/train_tab.py --minutes 1 5

For each budget: the Write tab's speed (/generate, --chars characters, characters per second) with the
server idle, then during a training of that many minutes on Tiny Shakespeare through /train (requests
one after another), then idle again. One JSON line per budget: the validation loss the page reports, the
steps, and the Write speed idle and while training (medians), with the load average before and after
(the machine may be shared).
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

from tinygpt.checkpoint import WEIGHTS_DIR
from tinygpt.data import DEFAULT_DATA


def write_speed(client: Client, chars: int) -> float:
    """Characters per second of one /generate request, as its client sees it."""
    started = time.perf_counter()
    client.predict("ROMEO:\n", chars, 0.8, 0, 1.0, 1, api_name="/generate")
    return chars / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0])
    parser.add_argument("--chars", type=int, default=1000, help="characters per /generate request")
    parser.add_argument("--idle-requests", type=int, default=5)
    parser.add_argument("--model", default=str(WEIGHTS_DIR))
    args = parser.parse_args()
    text = DEFAULT_DATA.read_text(encoding="utf-8")
    log = Path(tempfile.mkdtemp(prefix="train-tab-bench-")) / "app.log"
    process, url, ready = start_server(args.model, log)
    print(ready, file=sys.stderr)
    try:
        writer, trainer = Client(url, verbose=False), Client(url, verbose=False)
        for minutes in args.minutes:
            load_before = load_average()
            idle = [write_speed(writer, args.chars) for _ in range(args.idle_requests)]
            job = trainer.submit(text, minutes, api_name="/train")
            while len(job.outputs()) < 2 and not job.done():  # wait for the first steps: training has begun
                time.sleep(0.5)
            busy = []
            while not job.done():
                busy.append(write_speed(writer, args.chars))
            progress, _, sample, val_loss, _ = job.result()
            idle += [write_speed(writer, args.chars) for _ in range(args.idle_requests)]
            record = {
                "minutes": minutes,
                "val_loss": val_loss,
                "progress": progress.split("<div>")[-1].split("</div>")[0],
                "write_chars_per_s_idle": round(statistics.median(idle), 1),
                "write_chars_per_s_while_training": round(statistics.median(busy), 1) if busy else None,
                "write_requests_while_training": len(busy),
                "chars_per_request": args.chars,
                "load_average_before": load_before,
                "load_average_after": load_average(),
                "last_sample": sample,
            }
            print(json.dumps(record, ensure_ascii=False), flush=True)
    finally:
        stop_server(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())

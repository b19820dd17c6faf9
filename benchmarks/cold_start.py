"""Cold start: seconds from `python app.py` to the first answer of /generate, with an empty build cache.

    python benchmarks/cold_start.py

Starts app.py on a free port with TORCH_EXTENSIONS_DIR pointing at a new, empty folder (a fresh
machine, or a Space waking up: the C++ decode step has never been compiled), then calls /generate
with gradio_client as soon as the port accepts connections, until it answers. The page must answer
while the C++ step is still compiling in the background; the benchmark then waits for the switch to
it (the log line) and checks the page still answers. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from gradio_client import Client  # noqa: E402

PROMPT, CHARS = "ROMEO:\n", 200  # the API's default length


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    text = Client(url, verbose=False, analytics_enabled=False).predict(PROMPT, CHARS, api_name="/generate")
    return isinstance(text, str) and text.startswith(PROMPT) and len(text) == len(PROMPT) + CHARS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    report: dict = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="tinygpt-empty-build-cache-") as cache:
        log = Path(cache) / "app.log"
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(Path(cache) / "extensions"), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "app.py", "--port", str(port)]
        started = time.perf_counter()
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while time.perf_counter() - started < args.timeout:
                if process.poll() is not None:
                    raise RuntimeError(f"app.py exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    if answers(url):
                        report["first_answer_s"] = round(time.perf_counter() - started, 2)
                        break
                except Exception:  # not listening yet
                    time.sleep(0.1)
            lines = log.read_text().splitlines()
            report["decoding_when_answered"] = [line for line in lines if line.startswith("ready:")]
            while time.perf_counter() - started < args.timeout and "switched to" not in log.read_text():
                if "staying on" in log.read_text():
                    break
                time.sleep(0.5)
            report["cpp_switch_s"] = round(time.perf_counter() - started, 1)
            report["switch_line"] = [line for line in log.read_text().splitlines() if "switched to" in line or
                                     "staying on" in line]  # fmt: skip
            report["answers_after_switch"] = answers(url)
        finally:
            process.terminate()
            process.wait(timeout=15)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report))
    return 0 if "first_answer_s" in report and report["answers_after_switch"] else 1


if __name__ == "__main__":
    sys.exit(main())

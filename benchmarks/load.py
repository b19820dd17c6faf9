"""Load: many API clients at once against a real `python app.py`.

    python benchmarks/load.py                      # shipped weights, 32 clients x 4 requests x 200 characters
    python benchmarks/load.py --queue-overflow     # then more requests at once than the queue holds

Starts app.py on a free port, then runs N threads, each with its own gradio_client.Client, each
sending M requests one after another (all threads start together). Every answer is checked: the
prompt followed by exactly --chars characters of the model's alphabet. The server runs one
generation at a time (concurrency_id "model"), so latency under load is mostly time in the queue.

--queue-overflow adds a second phase: QUEUE_SIZE + 32 requests at the same instant. The queue holds
QUEUE_SIZE waiting requests; the rest must get gradio's "Queue is full" error at once, not hang, and
the accepted ones must still complete well-formed. Afterwards one more request checks the server is
still healthy. The last line is one JSON object; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # offline: no calls home from the clients

from gradio_client import Client  # noqa: E402

from tinygpt.checkpoint import CONFIG_FILE, WEIGHTS_DIR, read_config, resolve  # noqa: E402

QUEUE_SIZE = 64  # app.py's QUEUE_SIZE (not imported: that would load gradio's server side and torch)
PROMPTS = ["ROMEO:\n", "To be, or not to be", "First Citizen:\n", "KING HENRY:\nNow, lords,", "O Romeo, Romeo!"]
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, log: Path) -> tuple[subprocess.Popen, str, str]:
    """app.py on a free port, its output in `log` (a file: an unread pipe would fill up and block it).
    Returns (process, URL, its "ready: ..." line)."""
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--model", model]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        ready = [line for line in log.read_text().splitlines() if line.startswith("ready:")]
        if ready:
            return process, f"http://127.0.0.1:{port}/", ready[0]
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"app.py was not ready within {READY_TIMEOUT_S} s; see {log}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def resident_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of a non-empty list; None for an empty one."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))], 3)


class Results:
    """What the threads report, behind a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []  # completed, well-formed answers
        self.malformed: list[str] = []
        self.errors: list[tuple[float, str]] = []  # (seconds to the error, message)

    def ok(self, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)

    def bad(self, text: str) -> None:
        with self.lock:
            self.malformed.append(text)

    def error(self, seconds: float, message: str) -> None:
        with self.lock:
            self.errors.append((seconds, message))


def well_formed(text: object, prompt: str, chars: int, vocab: str) -> bool:
    return (
        isinstance(text, str)
        and text.startswith(prompt)
        and len(text) == len(prompt) + chars
        and set(text[len(prompt) :]) <= set(vocab)
    )


def one_request(client: Client, prompt: str, chars: int, seed: int, vocab: str, results: Results, timeout: float):
    start = time.perf_counter()
    try:
        text = client.submit(prompt, chars, 0.8, 0, 1.0, seed, api_name="/generate").result(timeout=timeout)
    except Exception as err:  # a timeout (a hang) counts too
        results.error(time.perf_counter() - start, f"{type(err).__name__}: {err}")
        return
    if well_formed(text, prompt, chars, vocab):
        results.ok(time.perf_counter() - start)
    else:
        results.bad(repr(text)[:200])


def run_phase(url: str, clients: int, requests: int, chars: int, vocab: str, timeout: float) -> tuple[Results, float]:
    """`clients` threads, each with its own Client, all starting together; returns the results and wall time."""
    connected = [Client(url, verbose=False, analytics_enabled=False) for _ in range(clients)]  # not timed
    start_line = threading.Barrier(clients + 1)
    results = Results()

    def worker(i: int) -> None:
        start_line.wait()
        for j in range(requests):
            one_request(connected[i], PROMPTS[(i + j) % len(PROMPTS)], chars, 1000 * i + j, vocab, results, timeout)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def summary(results: Results, wall_s: float, chars: int) -> dict:
    done = len(results.latencies)
    return {
        "completed": done,
        "errors": len(results.errors),
        "malformed": len(results.malformed),
        "error_messages": sorted({message for _, message in results.errors})[:5],
        "latency_s": {q: percentile(results.latencies, p) for q, p in [("p50", 50), ("p95", 95), ("max", 100)]},
        "wall_s": round(wall_s, 2),
        "throughput_requests_per_s": round(done / wall_s, 3),
        "throughput_chars_per_s": round(done * chars / wall_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (threads)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--chars", type=int, default=200, help="characters to generate per request")
    parser.add_argument("--model", default=str(WEIGHTS_DIR), help="weights folder (or Hub name) for app.py")
    parser.add_argument("--queue-overflow", action="store_true", help=f"then send QUEUE_SIZE ({QUEUE_SIZE}) + 32 "
                        "requests at once and check the extra ones are refused quickly")  # fmt: skip
    parser.add_argument("--overflow-chars", type=int, default=50, help="characters per request in that phase")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a request counts as hung")
    args = parser.parse_args()

    vocab = read_config(resolve(args.model) / CONFIG_FILE).vocab
    log = Path(tempfile.mkstemp(prefix="tinygpt-load-", suffix=".log")[1])
    # The load average shows what else was using the CPUs (e.g. a training run) while this ran.
    report: dict = {"model": args.model, "cpu_count": os.cpu_count(), "load_average_before": load_average()}
    process, url, ready = start_server(args.model, log)
    try:
        report["server"] = {"ready_line": ready, "log": str(log), "rss_mb_idle": resident_mb(process.pid)}
        solo, solo_s = run_phase(url, 1, 1, args.chars, vocab, args.timeout)  # also warms the server up
        report["solo_latency_s"] = round(solo_s, 3) if solo.latencies else None

        print(f"load: {args.clients} clients x {args.requests} requests x {args.chars} chars ...", file=sys.stderr)
        results, wall_s = run_phase(url, args.clients, args.requests, args.chars, vocab, args.timeout)
        report["load"] = {"clients": args.clients, "requests_per_client": args.requests, "chars": args.chars}
        report["load"] |= summary(results, wall_s, args.chars)
        passed = not results.errors and not results.malformed

        if args.queue_overflow:
            burst = QUEUE_SIZE + 32
            print(f"overflow: {burst} requests at once x {args.overflow_chars} chars ...", file=sys.stderr)
            results, wall_s = run_phase(url, burst, 1, args.overflow_chars, vocab, args.timeout)
            full = [s for s, message in results.errors if "Queue is full" in message]
            other = [message for _, message in results.errors if "Queue is full" not in message]
            report["overflow"] = {
                "sent_at_once": burst,
                "queue_size": QUEUE_SIZE,
                "chars": args.overflow_chars,
                "queue_full_errors": len(full),
                "max_s_to_queue_full_error": round(max(full), 3) if full else None,
                "other_errors": len(other),
                "other_error_messages": sorted(set(other))[:5],
                "completed_well_formed": len(results.latencies),
                "malformed": len(results.malformed),
                "max_latency_s": percentile(results.latencies, 100),
                "wall_s": round(wall_s, 2),
            }
            passed = passed and bool(full) and not other and not results.malformed

        after, _ = run_phase(url, 1, 1, args.chars, vocab, args.timeout)
        report["healthy_after"] = bool(after.latencies)
        report["server"]["rss_mb_after"] = resident_mb(process.pid)
        report["load_average_after"] = load_average()
        report["passed"] = passed and report["healthy_after"]
    finally:
        stop_server(process)
    print(json.dumps(report))
    return 0 if report.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())

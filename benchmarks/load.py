"""Load: many API clients at once against a real `python app.py`, batching on and off, side by side.

    python benchmarks/load.py                      # shipped weights, 32 clients x 4 requests x 200 characters
    python benchmarks/load.py --queue-overflow     # then more requests at once than the page takes in
    python benchmarks/load.py --served-before 10000  # each page first serves 10,000 short requests
    python benchmarks/load.py --v1                 # /v1, Gradio's API, one at a time, the engine alone

Runs app.py on a free port as shipped (the batching engine, default --max-batch) and with
--max-batch 1 (one generation at a time, no batching), one at a time, each started afresh for
each round and measured once it decodes with its final backend (the C++ step once built). The load:
N threads, each with its own HTTP connection, each sending M requests one after another (all threads
start together) to Gradio's HTTP API for /generate, reading the stream of updates. The clients use
the standard library's http.client: they share the server's cores, and httpx or gradio_client take
several times more CPU per character from them, which only the batched page (the one short of CPU)
would feel. Every answer is checked: the prompt followed by exactly --chars characters of the
model's alphabet.

The load runs --rounds times on each page, the pages taking turns (which goes first alternates), so
that each round's two figures are taken close together: on a shared machine the speed drifts by
~10% from one minute to the next, and a single pair of runs can read a ratio anywhere in that band.
For each page: completed, errors, latency p50/p95/max and first-character latency p95 over all its
rounds, characters/s per round and their median, and the CPU time the page's process and the
clients spent per character delivered (Linux); then the ratios (the throughput ratio is the median
of the rounds' ratios), and the ceiling: the machine's float32 matmul GFLOP/s (measured here) over
the ~2 x parameters FLOPs a character costs.

--served-before N first sends each page N one-character requests (32 clients) in every round, so the
load meets a page that has been up a while: whatever the server keeps per request (Gradio's sessions,
its record of past requests) has piled up. Reported as served_before (server CPU per request, memory
after), one entry per round.

--v1 runs, instead, four loads side by side in rounds (which goes first rotates): the same clients
streaming from /v1/completions (tinygpt.serving.http_api: one request each, every event only the new text)
on the shipped page; Gradio's API on the shipped page; Gradio's API on the one-at-a-time page
(--max-batch 1); and the engine itself with the page's backend, driven from this process's event
loop with no HTTP at all, whose characters/s is the ceiling the others are a fraction of. It prints a
table of the four (stderr) before the JSON.

--queue-overflow adds a phase against the shipped page: max-batch + QUEUE_SIZE + 32 requests at the
same instant. The page runs max-batch and queues QUEUE_SIZE; the rest must get gradio's "Queue is
full" error at once, not hang, and the accepted ones must still complete well-formed. The last line
is one JSON object; the exit status is 1 if any check failed.

--mixed measures, instead, a page under a mixed crowd against the Write-only crowd of the same run:
a fresh shipped page runs --crowds Write-only crowds (the load above); then another fresh page
where TRAINED_VISITORS visitors first train a model each (0.5 minutes) and then --crowds mixed
crowds, each of them at once: the Write crowd, a quarter of whose clients close each stream after
its first update; the trained visitors generating with their own models (/generate_trained), each
--requests times; one visitor training (/train, --train-minutes) from the crowd's start until it
ends, then closing its tab; and hostile Train-tab traffic: an upload over the size limit, a binary
file through the upload event, an empty text to train on (each must be refused with a clear
message). Then the trained visitors leave. Visitors are browser tabs over plain HTTP: a session
whose heartbeat connection stays open until they leave. It reports, for the well-behaved clients
(the staying Write clients, the trained visitors, the training), completed, errors, malformed and
latency p50/p95; Write characters/s against the Write-only crowd; and for the server, read from its
private /held endpoint (tinygpt.held): the engine rows, trained models and trainings still held
after everyone left and how long their release took, and the resident memory along the way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # offline: no calls home from the clients

import torch  # noqa: E402

from tinygpt.files.checkpoint import CONFIG_FILE, WEIGHTS_DIR, read_config, resolve  # noqa: E402
from tinygpt.files.paths import DEFAULT_DATA  # noqa: E402
from tinygpt.serving.engine import DEFAULT_MAX_BATCH  # noqa: E402
from tinygpt.training.data import load_text  # noqa: E402
from tinygpt.training.playground import MAX_MINUTES, MAX_UPLOAD_BYTES, MIN_MINUTES  # noqa: E402

QUEUE_SIZE = 64  # app.py's QUEUE_SIZE (not imported: that would load gradio's server side)
PROMPTS = ["ROMEO:\n", "To be, or not to be", "First Citizen:\n", "KING HENRY:\nNow, lords,", "O Romeo, Romeo!"]
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, log: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """app.py on a free port, its output in `log` (a file: an unread pipe would fill up and block it).
    Returns (process, URL, its start-up lines) once it decodes with its final backend."""
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--model", model, "--max-batch", str(max_batch)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    settled = ("ready:", "switched to", "staying on")
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if line.startswith(settled)]
        if any(line.startswith(settled[1:]) for line in lines):
            return process, f"http://127.0.0.1:{port}/", lines
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


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used so far, its finished threads included (Linux: /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


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
        self.first_chars: list[float] = []  # seconds to the first streamed character
        self.malformed: list[str] = []
        self.errors: list[tuple[float, str]] = []  # (seconds to the error, message)

    def ok(self, seconds: float, first_char: float | None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if first_char is not None:
                self.first_chars.append(first_char)

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


def one_request(
    connection: http.client.HTTPConnection, prompt: str, chars: int, seed: int, vocab: str, results: Results
) -> None:
    """One /generate call through Gradio's HTTP API, reading its stream of server-sent events."""
    start = time.perf_counter()
    first_char, text = None, None
    try:
        body = json.dumps({"data": [prompt, chars, 0.8, 0, 1.0, seed]})
        connection.request("POST", "/gradio_api/call/generate", body, {"Content-Type": "application/json"})
        posted = connection.getresponse()
        answer = posted.read()
        if posted.status != 200:
            raise RuntimeError(f"HTTP {posted.status}: {answer[:200]!r}")
        connection.request("GET", f"/gradio_api/call/generate/{json.loads(answer)['event_id']}")
        stream = connection.getresponse()
        event = None
        while line := stream.readline().decode():
            if line.startswith("event: "):
                event = line[len("event: ") :].strip()
            elif line.startswith("data: ") and event == "error":
                raise RuntimeError(line[len("data: ") :][:200])
            elif line.startswith("data: ") and event in ("generating", "complete"):
                text = json.loads(line[len("data: ") :])[0]
                if first_char is None and len(text) > len(prompt):
                    first_char = time.perf_counter() - start
                if event == "complete":
                    break
        stream.read()  # the rest of the response, so the connection can carry the next request
    except Exception as err:  # a timeout (a hang) counts too
        connection.close()  # a fresh connection for this client's next request
        results.error(time.perf_counter() - start, f"{type(err).__name__}: {err}")
        return
    if well_formed(text, prompt, chars, vocab):
        results.ok(time.perf_counter() - start, first_char)
    else:
        results.bad(repr(text)[:200])


def one_v1_request(
    connection: http.client.HTTPConnection, prompt: str, chars: int, seed: int, vocab: str, results: Results
) -> None:
    """One streamed /v1/completions call (tinygpt.serving.http_api): one request, its events each the new text."""
    start = time.perf_counter()
    first_char, text = None, prompt
    try:
        body = {"prompt": prompt, "max_tokens": chars, "temperature": 0.8, "top_p": 1.0, "seed": seed, "stream": True}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        stream = connection.getresponse()
        if stream.status != 200:
            raise RuntimeError(f"HTTP {stream.status}: {stream.read()[:200]!r}")
        while line := stream.readline().decode():
            if not line.startswith("data: "):
                continue
            if line.startswith("data: [DONE]"):
                break
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                raise RuntimeError(str(event["error"])[:200])
            text += event["choices"][0]["text"]
            if first_char is None and len(text) > len(prompt):
                first_char = time.perf_counter() - start
        stream.read()  # the end of the chunked body, so the connection can carry the next request
    except Exception as err:  # a timeout (a hang) counts too
        connection.close()
        results.error(time.perf_counter() - start, f"{type(err).__name__}: {err}")
        return
    if well_formed(text, prompt, chars, vocab):
        results.ok(time.perf_counter() - start, first_char)
    else:
        results.bad(repr(text)[:200])


def run_phase(
    url: str, clients: int, requests: int, chars: int, vocab: str, timeout: float, request: Callable = one_request
) -> tuple[Results, float]:
    """`clients` threads, each with its own HTTP connection, all starting together, each sending
    `requests` requests one after another (`request`: Gradio's API or /v1); returns the results and
    wall time."""
    address = urlsplit(url)
    connected = [http.client.HTTPConnection(address.hostname, address.port, timeout=timeout) for _ in range(clients)]
    start_line = threading.Barrier(clients + 1)
    results = Results()

    def worker(i: int) -> None:
        start_line.wait()
        for j in range(requests):
            prompt = PROMPTS[(i + j) % len(PROMPTS)]
            request(connected[i], prompt, chars, 1000 * i + j, vocab, results)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - start
    for connection in connected:
        connection.close()
    return results, wall_s


def rounds_summary(rounds: list[tuple[Results, float]], chars: int) -> dict:
    """The rounds of one page: counts and latencies over all of them, characters/s per round and their median."""
    latencies = [s for results, _ in rounds for s in results.latencies]
    errors = [message for results, _ in rounds for _, message in results.errors]
    per_round = [round(len(results.latencies) * chars / wall_s, 1) for results, wall_s in rounds]
    return {
        "completed": len(latencies),
        "errors": len(errors),
        "malformed": sum(len(results.malformed) for results, _ in rounds),
        "error_messages": sorted(set(errors))[:5],
        "latency_s": {q: percentile(latencies, p) for q, p in [("p50", 50), ("p95", 95), ("max", 100)]},
        "first_char_p95_s": percentile([s for results, _ in rounds for s in results.first_chars], 95),
        "wall_s": [round(wall_s, 2) for _, wall_s in rounds],
        "rounds_chars_per_s": per_round,
        "chars_per_s": round(statistics.median(per_round), 1),
    }


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """The machine's float32 matmul speed (torch, all threads): the best of `repeats` square matmuls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def flops_per_char(model: str) -> float:
    """~2 x the weights of every matrix: one multiply-add each per new character (attention aside)."""
    c = read_config(resolve(model) / CONFIG_FILE)
    matrices = c.n_layer * 12 * c.n_embd**2 + c.n_embd * len(c.vocab)
    return 2 * matrices


def serve_before(url: str, pid: int, requests: int, vocab: str, timeout: float, clients: int = 32) -> dict:
    """`requests` one-character requests from `clients` at once, so that the load then meets a page that
    has been serving for a while (what Gradio keeps per request adds up). Reports how they went."""
    server_cpu = cpu_seconds(pid)
    results, wall_s = run_phase(url, clients, max(requests // clients, 1), 1, vocab, timeout)
    done = len(results.latencies)
    report = {"completed": done, "errors": len(results.errors), "malformed": len(results.malformed)}
    report["wall_s"] = round(wall_s, 1)
    if server_cpu is not None and (server_cpu_after := cpu_seconds(pid)) is not None:
        report["server_cpu_ms_per_request"] = round(1000 * (server_cpu_after - server_cpu) / max(done, 1), 2)
    report["rss_mb_after"] = resident_mb(pid)
    return report


class Page:
    """app.py with one --max-batch, loaded through one API (`request`): started afresh for each round of
    the load, and what the rounds measured."""

    def __init__(self, max_batch: int, request: Callable = one_request) -> None:
        self.request = request
        self.report: dict = {"max_batch": max_batch, "api": "/v1/completions" if request is one_v1_request else
                             "gradio /generate"}  # fmt: skip
        self.rounds: list[tuple[Results, float]] = []
        self.server_cpu_s: float | None = 0.0
        self.clients_cpu_s = 0.0

    @contextlib.contextmanager
    def started(
        self, args: argparse.Namespace, vocab: str, served_before: int = 0
    ) -> Iterator[tuple[subprocess.Popen, str]]:
        """app.py on a free port, warmed up, then past `served_before` requests; stopped afterwards."""
        max_batch = self.report["max_batch"]
        log = Path(tempfile.mkstemp(prefix=f"tinygpt-load-batch{max_batch}-", suffix=".log")[1])
        process, url, lines = start_server(args.model, max_batch, log)
        try:
            self.report.setdefault("server_log", lines)
            self.report.setdefault("log", str(log))
            self.report.setdefault("rss_mb_idle", resident_mb(process.pid))
            run_phase(url, 1, 1, args.chars, vocab, args.timeout)  # warm up
            if served_before:
                before = serve_before(url, process.pid, served_before, vocab, args.timeout)
                self.report.setdefault("served_before", []).append(before)
            yield process, url
        finally:
            stop_server(process)

    def load(self, args: argparse.Namespace, vocab: str) -> None:
        """One round of the load on a fresh app.py, and the CPU it took: the page's process and the clients."""
        with self.started(args, vocab, args.served_before) as (process, url):
            server_cpu, clients_cpu = cpu_seconds(process.pid), time.process_time()
            load = (url, args.clients, args.requests, args.chars, vocab, args.timeout, self.request)
            self.rounds.append(run_phase(*load))
            server_cpu_after = cpu_seconds(process.pid)
            self.clients_cpu_s += time.process_time() - clients_cpu
            self.report["rss_mb_after"] = resident_mb(process.pid)
        if server_cpu is None or server_cpu_after is None or self.server_cpu_s is None:
            self.server_cpu_s = None  # not Linux
        else:
            self.server_cpu_s += server_cpu_after - server_cpu

    def summary(self, chars: int) -> dict:
        report = self.report | rounds_summary(self.rounds, chars)
        delivered = max(report["completed"] * chars, 1)
        if self.server_cpu_s is not None:
            report["server_cpu_ms_per_char"] = round(1000 * self.server_cpu_s / delivered, 4)
        report["clients_cpu_ms_per_char"] = round(1000 * self.clients_cpu_s / delivered, 4)
        report["passed"] = not report["errors"] and not report["malformed"]
        for before in report.get("served_before", []):
            report["passed"] = report["passed"] and not before["errors"] and not before["malformed"]
        return report


def overflow(args: argparse.Namespace, page: Page, vocab: str) -> dict:
    """max-batch + QUEUE_SIZE + 32 requests at once: the extra ones must get "Queue is full" at once."""
    burst = page.report["max_batch"] + QUEUE_SIZE + 32
    print(f"overflow: {burst} requests at once x {args.overflow_chars} chars ...", file=sys.stderr)
    with page.started(args, vocab) as (_, url):
        results, wall_s = run_phase(url, burst, 1, args.overflow_chars, vocab, args.timeout)
        after, _ = run_phase(url, 1, 1, args.chars, vocab, args.timeout)
    full = [s for s, message in results.errors if "Queue is full" in message]
    other = [message for _, message in results.errors if "Queue is full" not in message]
    report = {
        "sent_at_once": burst,
        "queue_full_errors": len(full),
        "max_s_to_queue_full_error": round(max(full), 3) if full else None,
        "other_errors": len(other),
        "other_error_messages": sorted(set(other))[:5],
        "completed_well_formed": len(results.latencies),
        "malformed": len(results.malformed),
        "wall_s": round(wall_s, 2),
        "healthy_after": bool(after.latencies),
    }
    report["passed"] = bool(full) and not other and not results.malformed and report["healthy_after"]
    return report


ENGINE_INTERVAL_S = 0.05  # app.py's STREAM_INTERVAL_S: how often a stream takes its new characters


class EngineInProcess:
    """The page's engine and backend (the C++ step on every CPU, PyTorch on one thread, as app.py
    settles) driven by the same load from this process's event loop: no HTTP, no web server. What
    the pages deliver is measured against it."""

    def __init__(self, model: str) -> None:
        from tinygpt.files.checkpoint import load_model
        from tinygpt.model.tokenizer import CharTokenizer
        from tinygpt.serving.backends import CppBackend, TorchBackend, extension
        from tinygpt.serving.cpus import usable_cpus
        from tinygpt.serving.engine import Engine

        weights = load_model(resolve(model))
        backend = CppBackend(weights, usable_cpus()) if extension() is not None else TorchBackend(weights)
        self.engine = Engine(backend, DEFAULT_MAX_BATCH)
        self.tokenizer = CharTokenizer(weights.config.vocab)
        self.report: dict = {"backend": backend.name, "api": "none: the engine in this process"}
        self.rounds: list[tuple[Results, float]] = []

    def load(self, args: argparse.Namespace, vocab: str) -> None:
        from tinygpt.serving.generate import start

        results = Results()

        async def client(i: int) -> None:
            for j in range(args.requests):
                prompt = PROMPTS[(i + j) % len(PROMPTS)]
                began, first_char = time.perf_counter(), None
                text, (sequence,) = start(self.tokenizer, prompt, args.chars, 0.8, 1000 * i + j, 0, 1.0)
                async for tokens in self.engine.generate(sequence, ENGINE_INTERVAL_S):
                    text += "".join(vocab[token.token] for token in tokens)
                    first_char = first_char or time.perf_counter() - began
                if well_formed(text, prompt, args.chars, vocab):
                    results.ok(time.perf_counter() - began, first_char)
                else:
                    results.bad(repr(text)[:200])

        async def crowd() -> float:
            began = time.perf_counter()
            await asyncio.gather(*(client(i) for i in range(args.clients)))
            return time.perf_counter() - began

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as app.py with the C++ step: sampling on one thread
        try:
            asyncio.run(crowd())  # warm up: the first steps of a fresh engine are slower
            results = Results()
            self.rounds.append((results, asyncio.run(crowd())))
        finally:
            torch.set_num_threads(threads)

    def summary(self, chars: int) -> dict:
        report = self.report | rounds_summary(self.rounds, chars)
        report["passed"] = not report["errors"] and not report["malformed"]
        return report


def side_by_side(args: argparse.Namespace, vocab: str, report: dict) -> int:
    """--v1: the load over /v1 (streamed), over Gradio's API, on the one-at-a-time page, and the engine
    in-process, in rounds (which goes first rotates); prints a table (stderr) and the JSON report."""
    contenders = {
        "/v1 streaming (batched page)": Page(args.max_batch, one_v1_request),
        "Gradio API (batched page)": Page(args.max_batch),
        "one at a time (--max-batch 1, Gradio API)": Page(1),
        "engine in-process, no HTTP": EngineInProcess(args.model),
    }
    names = list(contenders)
    load = f"{args.clients} x {args.requests} x {args.chars} chars"
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            print(f"round {r + 1}, {name}: {load} ...", file=sys.stderr)
            contenders[name].load(args, vocab)
    summaries = {name: contender.summary(args.chars) for name, contender in contenders.items()}
    ceiling = summaries[names[-1]]["chars_per_s"]
    one_at_a_time = summaries[names[2]]["chars_per_s"]
    rows = ["| load | characters/s | p95 latency (s) | first character p95 (s) | of the engine's | x one at a time |",
            "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, summary in summaries.items():
        summary["fraction_of_engine"] = round(summary["chars_per_s"] / max(ceiling, 1e-9), 3)
        summary["x_one_at_a_time"] = round(summary["chars_per_s"] / max(one_at_a_time, 1e-9), 2)
        rows.append(f"| {name} | {summary['chars_per_s']:,.0f} | {summary['latency_s']['p95']} | "
                    f"{summary['first_char_p95_s']} | {summary['fraction_of_engine']:.0%} | "
                    f"{summary['x_one_at_a_time']} |")  # fmt: skip
    print("\n".join(rows), file=sys.stderr)
    report["side_by_side"] = summaries
    report["load_average_after"] = load_average()
    report["passed"] = all(summary["passed"] for summary in summaries.values())
    print(json.dumps(report))
    return 0 if report["passed"] else 1


# --- The mixed crowd ------------------------------------------------------------------------------

TRAINED_VISITORS = 2  # visitors who train first, then generate with their own models through the crowd
TRAIN_TEXT_CHARS = 100_000  # what each visitor trains on: the start of Tiny Shakespeare
TRAINED_PROMPT = "First Citizen:\n"


def connect(url: str, timeout: float) -> http.client.HTTPConnection:
    address = urlsplit(url)
    return http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)


def sse(response: http.client.HTTPResponse) -> Iterator[tuple[str | None, object]]:
    """(event, data) of a Gradio server-sent event stream, as they come."""
    event = None
    while line := response.readline().decode():
        if line.startswith("event: "):
            event = line[len("event: ") :].strip()
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])


def call(
    url: str, api_name: str, data: list, timeout: float, session: str | None = None
) -> tuple[http.client.HTTPConnection, Iterator[tuple[str | None, object]]]:
    """Start one call through Gradio's HTTP API on a connection of its own: (connection, its events)."""
    connection = connect(url, timeout)
    body = json.dumps({"data": data, **({"session_hash": session} if session else {})})
    connection.request("POST", f"/gradio_api/call/{api_name}", body, {"Content-Type": "application/json"})
    posted = connection.getresponse()
    answer = posted.read()
    if posted.status != 200:
        raise RuntimeError(f"HTTP {posted.status}: {answer[:200]!r}")
    connection.request("GET", f"/gradio_api/call/{api_name}/{json.loads(answer)['event_id']}")
    return connection, sse(connection.getresponse())


def final(events: Iterator[tuple[str | None, object]]) -> tuple[str, object]:
    """A call's last event: ("complete", outputs) or ("error", message)."""
    for event, data in events:
        if event in ("complete", "error"):
            return event, data
    return "ended", None


def held(url: str, timeout: float) -> dict:
    """The page's /held counts (tinygpt.held): engine rows, trained models, trainings."""
    connection, events = call(url, "held", [], timeout)
    with contextlib.closing(connection):
        event, data = final(events)
    if event != "complete":
        raise RuntimeError(f"/held answered {event}: {data!r}")
    return data[0]


class Visitor:
    """A browser tab, over plain HTTP: a session whose heartbeat connection stays open until it leaves
    (then Gradio runs the page's unload event, which frees the session's trained model)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout, self.session = url, timeout, uuid.uuid4().hex
        self.connections = [connect(url, timeout)]
        self.connections[0].request("GET", f"/gradio_api/heartbeat/{self.session}")
        self.connections[0].getresponse().readline()  # "data: ALIVE"

    def call(self, api_name: str, data: list) -> Iterator[tuple[str | None, object]]:
        connection, events = call(self.url, api_name, data, self.timeout, self.session)
        self.connections.append(connection)
        return events

    def leave(self) -> None:
        for connection in self.connections:
            connection.close()


def train(visitor: Visitor, text: str, minutes: float) -> str:
    event, data = final(visitor.call("train", [text, minutes]))
    if event != "complete":
        raise RuntimeError(f"a visitor's training ended with {event}: {data!r}")
    return data[0]


def upload(url: str, name: str, content: bytes, timeout: float) -> tuple[int, bytes]:
    """POST a file to Gradio's upload route: (HTTP status, answer)."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: text/plain\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    with contextlib.closing(connect(url, timeout)) as connection:
        form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        connection.request("POST", "/gradio_api/upload", body, form)
        answer = connection.getresponse()
        return answer.status, answer.read()


def hostile(url: str, timeout: float, refused: list[str], accepted: list[str], waiting: list[threading.Thread]) -> None:
    """Train-tab traffic that must be refused with a clear message while the page serves the others:
    an upload over the size limit, a binary file in the upload, an empty text to train on."""
    status, answer = upload(url, "huge.txt", b"a" * (MAX_UPLOAD_BYTES + 1), timeout)
    (refused if status == 413 else accepted).append(f"oversized upload: HTTP {status} {answer[:80]!r}")
    status, answer = upload(url, "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 64, timeout)
    if status == 200:
        path = json.loads(answer)[0]
        connection, events = call(url, "upload", [{"path": path, "meta": {"_type": "gradio.FileData"}}], timeout)
        with contextlib.closing(connection):
            event, data = final(events)
        (refused if event == "error" and "UTF-8" in str(data) else accepted).append(f"binary file: {data!r}"[:120])
    else:
        accepted.append(f"binary file: upload answered HTTP {status}")

    def empty_text() -> None:  # waits for the running training (one at a time), then is refused at once
        connection, events = call(url, "train", ["", 1], timeout)
        with contextlib.closing(connection):
            event, data = final(events)
        (refused if event == "error" and "no text" in str(data) else accepted).append(f"empty text: {data!r}"[:120])

    waiting.append(threading.Thread(target=empty_text))
    waiting[-1].start()


def leaving_writer(url: str, requests: int, vocab: str, timeout: float, results: Results) -> None:
    """A Write client that closes each stream after its first update (a closed tab, a Stop)."""
    for j in range(requests):
        start = time.perf_counter()
        try:
            connection, events = call(url, "generate", [PROMPTS[j % len(PROMPTS)], 200, 0.8, 0, 1.0, j], timeout)
            with contextlib.closing(connection):
                event, data = next((e, d) for e, d in events if e in ("generating", "complete", "error"))
            if event == "error" or not isinstance(data[0], str) or set(data[0]) - set(vocab):
                results.bad(repr(data)[:200])
            else:
                results.ok(time.perf_counter() - start, None)
        except Exception as err:
            results.error(time.perf_counter() - start, f"{type(err).__name__}: {err}")


def trained_writer(visitor: Visitor, alphabet: set[str], requests: int, chars: int, results: Results) -> None:
    """A visitor generating with their own trained model, one request after another."""
    for _ in range(requests):
        start = time.perf_counter()
        try:
            event, data = final(visitor.call("generate_trained", [TRAINED_PROMPT, chars, 0.8]))
            if event != "complete":
                raise RuntimeError(f"{event}: {data!r}"[:200])
        except Exception as err:
            results.error(time.perf_counter() - start, f"{type(err).__name__}: {err}")
            continue
        text = data[0]
        fine = isinstance(text, str) and text.startswith(TRAINED_PROMPT) and len(text) == len(TRAINED_PROMPT) + chars
        if fine and set(text) <= alphabet:
            results.ok(time.perf_counter() - start, None)
        else:
            results.bad(repr(text)[:200])


def mixed_crowd(url: str, args: argparse.Namespace, vocab: str, trained: list[Visitor], text: str) -> dict:
    """The Write crowd (a quarter of it closing each stream after its first update), the trained
    visitors writing with their models, one visitor training for the whole crowd (leaving with it),
    and hostile Train-tab traffic, all at once."""
    trained_results, leavers = Results(), Results()
    refused, accepted, waiting = [], [], []
    trainer = Visitor(url, args.timeout)
    training = trainer.call("train", [text, args.train_minutes])
    trainer_updates, trainer_errors = [], []

    def follow_training() -> None:
        try:
            for event, data in training:
                if event == "error":
                    trainer_errors.append(str(data)[:200])
                trainer_updates.append(event)
        except (OSError, ValueError, AttributeError):  # it left: its connections were closed under the reader
            pass

    follower = threading.Thread(target=follow_training)
    follower.start()
    leaving = [i for i in range(args.clients) if i % 4 == 0]
    staying = [i for i in range(args.clients) if i % 4]
    threads = [threading.Thread(target=leaving_writer, args=(url, args.requests, vocab, args.timeout, leavers))
               for _ in leaving]  # fmt: skip
    threads += [threading.Thread(target=trained_writer, args=(v, set(text), args.requests, args.chars, trained_results))
                for v in trained]  # fmt: skip
    threads.append(threading.Thread(target=hostile, args=(url, args.timeout, refused, accepted, waiting)))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    write_results, write_wall_s = run_phase(url, len(staying), args.requests, args.chars, vocab, args.timeout)
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    trainer.leave()  # the whole-run trainer closes its tab
    follower.join(timeout=60)
    for thread in waiting:
        thread.join(timeout=args.timeout)
    return {
        "write": rounds_summary([(write_results, write_wall_s)], args.chars) | {"clients": len(staying)},
        "trained": rounds_summary([(trained_results, wall_s)], args.chars) | {"clients": len(trained)},
        "closing_after_first_update": {"clients": len(leaving), "first_updates": len(leavers.latencies),
                                       "errors": len(leavers.errors), "malformed": len(leavers.malformed)},
        "training": {"updates": len(trainer_updates), "errors": trainer_errors},
        "hostile": {"refused_clearly": len(refused), "not_refused": accepted, "refusals": refused},
    }  # fmt: skip


def released(url: str, timeout: float, deadline_s: float = 120) -> tuple[dict, float]:
    """/held once nothing is held (every row, model and training freed) or after `deadline_s`, and the
    seconds it took."""
    start = time.perf_counter()
    while True:
        counts = held(url, timeout)
        freed = not any(counts[k] for k in ("rows", "waiting", "trained_models", "trainings"))
        if freed or time.perf_counter() - start > deadline_s:
            return counts, round(time.perf_counter() - start, 1)
        time.sleep(0.5)


def mixed_page(args: argparse.Namespace, vocab: str) -> dict:
    """A fresh shipped page: the trained visitors train, then --crowds mixed crowds, then everyone
    leaves; what the page still holds afterwards, and its resident memory along the way."""
    text = load_text(DEFAULT_DATA)[:TRAIN_TEXT_CHARS]
    page = Page(args.max_batch)
    with page.started(args, vocab, args.served_before) as (process, url):
        report: dict = {"rss_mb_before": resident_mb(process.pid)}
        trained = [Visitor(url, args.timeout) for _ in range(TRAINED_VISITORS)]
        for visitor in trained:
            train(visitor, text, MIN_MINUTES)
        report["rss_mb_after_training"] = resident_mb(process.pid)
        report["crowds"] = []
        for _ in range(args.crowds):
            crowd = mixed_crowd(url, args, vocab, trained, text)
            crowd["rss_mb_after"] = resident_mb(process.pid)
            report["crowds"].append(crowd)
        report["held_before_leaving"] = held(url, args.timeout)
        for visitor in trained:
            visitor.leave()
        report["held_after"], report["seconds_to_release"] = released(url, args.timeout)
        report["rss_mb_after_release"] = resident_mb(process.pid)
        report["served_before"] = page.report.get("served_before", [])
    return report


def write_only_page(args: argparse.Namespace, vocab: str) -> dict:
    """A fresh shipped page and --crowds Write-only crowds (as the default load), for comparison."""
    page = Page(args.max_batch)
    with page.started(args, vocab, args.served_before) as (process, url):
        report: dict = {"rss_mb_before": resident_mb(process.pid), "crowds": []}
        for _ in range(args.crowds):
            results = run_phase(url, args.clients, args.requests, args.chars, vocab, args.timeout)
            report["crowds"].append({"write": rounds_summary([results], args.chars) | {"clients": args.clients},
                                     "rss_mb_after": resident_mb(process.pid)})  # fmt: skip
        report["held_after"], report["seconds_to_release"] = released(url, args.timeout)
        report["served_before"] = page.report.get("served_before", [])
    return report


def mixed(args: argparse.Namespace, vocab: str) -> dict:
    """The Write-only crowd and the mixed crowd on fresh shipped pages, one after the other, and the checks."""
    print(f"write-only: {args.crowds} crowd(s) of {args.clients} x {args.requests} x {args.chars} chars ...",
          file=sys.stderr)  # fmt: skip
    write_only = write_only_page(args, vocab)
    print(f"mixed: {TRAINED_VISITORS} visitors train, then {args.crowds} mixed crowd(s) ...", file=sys.stderr)
    crowd = mixed_page(args, vocab)
    report = {"write_only": write_only, "mixed": crowd}
    pairs = zip(crowd["crowds"], write_only["crowds"], strict=True)
    report["write_chars_per_s_ratio"] = [round(m["write"]["chars_per_s"] / max(w["write"]["chars_per_s"], 1e-9), 2)
                                         for m, w in pairs]  # fmt: skip
    behaved = [c[part] for c in crowd["crowds"] for part in ("write", "trained")]
    report["passed"] = (
        all(not part["errors"] and not part["malformed"] for part in behaved)
        and all(not c["training"]["errors"] and not c["hostile"]["not_refused"] for c in crowd["crowds"])
        and not any(crowd["held_after"][k] for k in ("rows", "waiting", "trained_models", "trainings"))
        and not any(write_only["held_after"][k] for k in ("rows", "waiting"))
    )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (threads)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client, one after another")
    parser.add_argument("--chars", type=int, default=200, help="characters to generate per request")
    parser.add_argument("--model", default=str(WEIGHTS_DIR), help="weights folder (or Hub name) for app.py")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="the shipped page's --max-batch")
    parser.add_argument("--queue-overflow", action="store_true", help="then send max-batch + QUEUE_SIZE "
                        f"({QUEUE_SIZE}) + 32 requests at once; the extra ones must be refused quickly")  # fmt: skip
    parser.add_argument("--overflow-chars", type=int, default=50, help="characters per request in that phase")
    parser.add_argument("--served-before", type=int, default=0, help="first send this many one-character "
                        "requests to each page (one that has been up a while), then the load")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="runs of the load on each page, the pages taking turns")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a request counts as hung")
    parser.add_argument("--v1", action="store_true", help="instead: the load over /v1/completions (streamed), "
                        "over Gradio's API, on the one-at-a-time page, and the engine in this process with no "
                        "HTTP, side by side (the rounds rotate which goes first)")  # fmt: skip
    parser.add_argument("--mixed", action="store_true", help="instead: the Write-only crowd, then the mixed crowd, "
                        "each on a fresh shipped page (see the module doc)")  # fmt: skip
    parser.add_argument("--crowds", type=int, default=2, help="with --mixed: crowds in a row on each page")
    parser.add_argument("--train-minutes", type=float, default=MAX_MINUTES,
                        help="with --mixed: the budget of the training that runs through each crowd")  # fmt: skip
    args = parser.parse_args()

    vocab = read_config(resolve(args.model) / CONFIG_FILE).vocab
    # The load average shows what else was using the CPUs (other work slows both sides alike).
    report: dict = {"model": args.model, "cpu_count": os.cpu_count(), "load_average_before": load_average()}
    report["load"] = {"clients": args.clients, "requests_per_client": args.requests, "chars": args.chars}
    report["matmul_gflops_per_s"] = round(matmul_gflops(), 1)
    report["ceiling_chars_per_s"] = round(report["matmul_gflops_per_s"] * 1e9 / flops_per_char(args.model))
    if args.v1:
        return side_by_side(args, vocab, report)
    if args.mixed:
        report |= mixed(args, vocab)
        report["load_average_after"] = load_average()
        print(json.dumps(report))
        return 0 if report["passed"] else 1
    pages = {"batched": Page(args.max_batch), "batching_off": Page(1)}
    load = f"{args.clients} x {args.requests} x {args.chars} chars"
    for r in range(args.rounds):
        for name in list(pages) if r % 2 == 0 else list(pages)[::-1]:
            print(f"round {r + 1}, {name}: {load} ...", file=sys.stderr)
            pages[name].load(args, vocab)
    batched, unbatched = (page.summary(args.chars) for page in pages.values())
    if args.queue_overflow:
        batched["overflow"] = overflow(args, pages["batched"], vocab)
        batched["passed"] = batched["passed"] and batched["overflow"]["passed"]
    report["batched"], report["batching_off"] = batched, unbatched
    pairs = zip(batched["rounds_chars_per_s"], unbatched["rounds_chars_per_s"], strict=True)
    ratios = [b / max(u, 1e-9) for b, u in pairs]
    report["rounds_throughput_ratio"] = [round(ratio, 2) for ratio in ratios]
    report["throughput_ratio"] = round(statistics.median(ratios), 2)
    if batched["latency_s"]["p95"] and unbatched["latency_s"]["p95"]:
        report["p95_latency_ratio"] = round(batched["latency_s"]["p95"] / unbatched["latency_s"]["p95"], 3)
    report["fraction_of_ceiling"] = round(batched["chars_per_s"] / report["ceiling_chars_per_s"], 3)
    report["load_average_after"] = load_average()
    report["passed"] = batched["passed"] and unbatched["passed"]
    print(json.dumps(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

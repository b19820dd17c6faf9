"""Serving, end to end through gradio_client: cancelling a running generation, several requests at
once (batched by the engine), and `python app.py` on PyTorch alone. The answers are checked against
the library's own generation of the same request, one at a time, in this process."""

import threading
import time
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from gradio_client.utils import Status

from tests.conftest import free_port, read, start_app, stop_app
from tinygpt.files.checkpoint import load_model
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.serving import backends
from tinygpt.serving.backends import TorchBackend
from tinygpt.serving.cpus import usable_cpus
from tinygpt.serving.engine import Engine
from tinygpt.web.page import QUEUE_SIZE, build_demo, make_generate

pytestmark = pytest.mark.slow


class PassCounter:
    """Counts the model's forward passes (a hook on its output layer) and slows each by 2 ms, so a long
    generation lasts seconds and a request that runs on unseen would show in the count."""

    def __init__(self, model) -> None:
        self.passes = 0
        model.lm_head.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.passes += 1
        time.sleep(0.002)


@pytest.fixture(scope="module")
def in_process(tokenizer):
    """The app's Blocks on the tiny model, served from this process, so the test sees the model work."""
    torch.manual_seed(0)
    config = GPTConfig(vocab=tokenizer.vocab, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    model = GPT(config).eval()
    with torch.no_grad():  # peaked distributions: greedy texts that differ from prompt to prompt
        for p in model.parameters():
            p.mul_(3)
    counter = PassCounter(model)
    demo = build_demo(Engine(TorchBackend(model), max_batch=4))
    demo.queue(max_size=QUEUE_SIZE)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    reference = GPT(config).eval()
    reference.load_state_dict(model.state_dict())
    one_at_a_time = Engine(TorchBackend(reference), max_batch=1)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False), counter, make_generate(one_at_a_time)
    demo.close()


def test_a_cancelled_generation_stops_and_the_next_request_is_served(in_process):
    client, counter, generate = in_process
    job = client.submit("ROMEO:", 2000, 0.8, 0, 1.0, 1, api_name="/generate")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2 and time.monotonic() < deadline:  # streaming: it is running
        time.sleep(0.01)
    assert len(job.outputs()) >= 2 and not job.done()
    job.cancel()
    # Each pass is one step of the batch: had the cancelled generation run on, it would take 2000.
    assert client.predict("JULIET:", 20, 0.0, api_name="/generate") == list(read(generate("JULIET:", 20, 0.0)))[-1]
    time.sleep(0.5)
    assert counter.passes < 1000
    assert job.status().code == Status.CANCELLED
    assert len(job.outputs()[-1]) < len("ROMEO:") + 2000


def test_concurrent_requests_each_get_their_own_answer(in_process):
    client, _, generate = in_process
    requests = [  # greedy, and sampled with seeds: (prompt, characters, temperature, top-k, top-p, seed)
        ("ROMEO:", 40, 0.0, 0, 1.0, None),
        ("First Citizen:\n", 40, 0.0, 0, 1.0, None),
        ("KING", 40, 0.9, 0, 1.0, 5),
        ("O Romeo", 40, 0.9, 5, 0.9, 6),
        ("ROMEO:", 40, 0.9, 0, 1.0, 7),
    ]
    answers = [None] * len(requests)

    def ask(i):
        answers[i] = Client(client.src, verbose=False).predict(*requests[i], api_name="/generate")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == [list(read(generate(*request)))[-1] for request in requests]
    assert len(set(answers)) == len(answers)


@pytest.fixture(scope="module")
def torch_server(tiny_weights, tmp_path_factory):
    """`python app.py --backend torch`: PyTorch decoding only, no C++ step built or switched to."""
    log = tmp_path_factory.mktemp("torch") / "app.log"
    process, url = start_app(tiny_weights, log, "--backend", "torch")
    yield url, log
    stop_app(process)


def wait_for(log: Path, line_start: str | tuple[str, ...], timeout_s: float = 60) -> str:
    """The first line of `log` that starts with `line_start`, once the app has written it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if line.startswith(line_start)]
        if lines:
            return lines[0]
        time.sleep(0.1)
    pytest.fail(f"no line starting {line_start!r} in {log}:\n{log.read_text()}")


def test_the_cpp_step_gets_a_thread_per_cpu_and_pytorch_keeps_one(served, torch_server):
    """With the C++ step, what runs on PyTorch is a batch's sampling, which one thread does faster than
    two; the step's own threads do the work (docs/crowd.md). The torch backend keeps PyTorch's threads."""
    if backends.extension() is None:
        pytest.skip("the C++ decode step could not be built here")
    _, log = served
    switched = wait_for(log, ("switched to", "staying on"))
    assert switched.startswith(f"switched to the C++ decode step ({usable_cpus()} threads;")
    assert "(PyTorch threads: 1)" in wait_for(log, "ready:")
    _, torch_log = torch_server
    assert f"(PyTorch threads: {usable_cpus()})" in wait_for(torch_log, "ready:")


def test_the_app_on_pytorch_alone_serves_the_librarys_text(torch_server, tiny_weights):
    url, log = torch_server
    assert "decoding with torch (" in wait_for(log, "ready:") and "C++" not in log.read_text()
    client = Client(url, verbose=False)
    library = make_generate(Engine(TorchBackend(load_model(tiny_weights)), max_batch=1))
    for prompt in ("ROMEO:\n", "First Citizen:\nWe are"):
        assert client.predict(prompt, 120, 0.0, api_name="/generate") == list(read(library(prompt, 120, 0.0)))[-1]
    sampled = client.predict("ROMEO:", 120, 0.8, 0, 1.0, 3, api_name="/generate")
    assert sampled == list(read(library("ROMEO:", 120, 0.8, 0, 1.0, 3)))[-1]

"""Serving, end to end through gradio_client: cancelling a running generation, several requests at
once, and `python app.py` decoding speculatively. The answers are checked against the library's own
generation of the same request, one at a time, in this process."""

import threading
import time

import pytest
import torch
from gradio_client import Client
from gradio_client.utils import Status

from app import QUEUE_SIZE, build_demo, make_generate
from tests.conftest import free_port, start_app, stop_app
from tinygpt.checkpoint import load_model
from tinygpt.config import GPTConfig
from tinygpt.generate import for_inference
from tinygpt.model import GPT

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
    demo = build_demo(model)
    demo.queue(max_size=QUEUE_SIZE)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    reference = GPT(config).eval()
    reference.load_state_dict(model.state_dict())
    yield Client(f"http://127.0.0.1:{port}/", verbose=False), counter, make_generate(reference)
    demo.close()


def test_a_cancelled_generation_stops_and_the_next_request_is_served(in_process):
    client, counter, generate = in_process
    job = client.submit("ROMEO:", 2000, 0.8, 0, 1.0, 1, api_name="/generate")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2 and time.monotonic() < deadline:  # streaming: it is running
        time.sleep(0.01)
    assert len(job.outputs()) >= 2 and not job.done()
    job.cancel()
    # One request at a time: had the cancelled generation run on, this one would wait for its 2000 passes.
    assert client.predict("JULIET:", 20, 0.0, api_name="/generate") == list(generate("JULIET:", 20, 0.0))[-1]
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
    assert answers == [list(generate(*request))[-1] for request in requests]
    assert len(set(answers)) == len(answers)


@pytest.fixture(scope="module")
def speculative_server(tiny_weights, tmp_path_factory):
    """`python app.py --no-fused`: PyTorch decoding, where the app speculates by default."""
    log = tmp_path_factory.mktemp("speculative") / "app.log"
    process, url = start_app(tiny_weights, log, "--no-fused")
    yield url, log
    stop_app(process)


def test_the_app_serves_speculative_decoding_with_the_plain_greedy_text(speculative_server, tiny_weights):
    url, log = speculative_server
    deadline = time.monotonic() + 60
    while "ready:" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "speculative" in log.read_text()
    client = Client(url, verbose=False)
    plain = make_generate(for_inference(load_model(tiny_weights), "float32"))  # no draft: one pass per character
    for prompt in ("ROMEO:\n", "First Citizen:\nWe are"):
        assert client.predict(prompt, 120, 0.0, api_name="/generate") == list(plain(prompt, 120, 0.0))[-1]
    sampled = client.predict("ROMEO:", 120, 0.8, 0, 1.0, 3, api_name="/generate")
    assert sampled.startswith("ROMEO:") and len(sampled) == len("ROMEO:") + 120
    assert client.predict("ROMEO:", 120, 0.8, 0, 1.0, 3, api_name="/generate") == sampled

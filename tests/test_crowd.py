"""The page under a mixed crowd: each kind of work has a concurrency group of its own, so a visitor's
"Generate with my model" leaves everyone else's generations batched; a generation whose client goes
away leaves the engine's batch; a training whose visitor leaves is killed and its folder deleted."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections import defaultdict
from urllib.parse import urlsplit

import gradio as gr
import pytest
import torch
from gradio_client import Client

from app import QUEUE_SIZE, build_demo
from tests.conftest import free_port, tiny_recipe
from tests.test_train_tab import LATIN, words
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.serving.backends import TorchBackend
from tinygpt.serving.engine import Engine
from tinygpt.training.playground import MAX_UPLOAD_BYTES
from tinygpt.web.held import held
from tinygpt.web.train_tab import TRAINED_GENERATIONS, TRAINED_GROUP, TrainSettings

AT_ONCE = 8  # generations started together


def groups_with_several_limits(demo: gr.Blocks) -> dict[str, set]:
    """The concurrency groups whose events ask for different limits: Gradio gives such a group the
    lowest of them, once any of its events has been queued, so one event would cap the others."""
    limits = defaultdict(set)
    for fn in demo.fns.values():
        limits[fn.concurrency_id].add(fn.concurrency_limit)
    return {group: found for group, found in limits.items() if len(found) > 1}


def page_model(tokenizer) -> GPT:
    """The tiny model, each forward pass slowed by 2 ms: a generation of 1000 characters lasts seconds."""
    torch.manual_seed(0)
    config = GPTConfig(vocab=tokenizer.vocab, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    model = GPT(config).eval()
    model.lm_head.register_forward_hook(lambda *_: time.sleep(0.002))
    return model


@pytest.fixture(scope="module")
def page(tokenizer):
    """The app's page (Write, Train, the APIs) on the slowed tiny model, served in this process: (URL, engine)."""
    engine = Engine(TorchBackend(page_model(tokenizer)), max_batch=AT_ONCE)
    demo = build_demo(engine, None, TrainSettings(0.05, 0.5, tiny_recipe))
    demo.queue(max_size=QUEUE_SIZE)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", engine
    demo.close()
    engine.close()


def test_no_concurrency_group_holds_events_with_different_limits(tiny_model):
    engine = Engine(TorchBackend(tiny_model), max_batch=AT_ONCE)
    demo = build_demo(engine, None, TrainSettings(0.05, 0.5, tiny_recipe))
    assert groups_with_several_limits(demo) == {}
    by_name = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values()}
    assert by_name["generate"] == by_name["write"] == ("model", AT_ONCE)
    assert by_name["train"] == ("train", 1)
    assert by_name["generate_trained"] == (TRAINED_GROUP, TRAINED_GENERATIONS)
    assert TRAINED_GROUP not in ("model", "train")
    engine.close()


def test_the_check_finds_a_group_shared_by_different_limits():
    with gr.Blocks() as demo:
        one, other = gr.Button(), gr.Button()
        one.click(lambda: None, concurrency_limit=32, concurrency_id="shared")
        other.click(lambda: None, concurrency_limit=1, concurrency_id="shared")
    assert groups_with_several_limits(demo) == {"shared": {1, 32}}


@pytest.mark.slow
def test_generating_with_a_trained_model_leaves_the_page_generating_together(page):
    url, engine = page
    newcomer = Client(url, verbose=False)
    with pytest.raises(Exception, match="no trained model in your session"):
        newcomer.predict("", 10, 1.0, api_name="/generate_trained")  # an error: once, it still lowered the limit
    trainer = Client(url, verbose=False)
    text = words(LATIN, 3000, 8)
    trainer.predict(text, 0.05, api_name="/train")
    written = trainer.predict("lorem", 20, 0.8, api_name="/generate_trained")
    assert written.startswith("lorem") and len(written) == 25 and set(written) <= set(text)
    clients = [Client(url, verbose=False) for _ in range(AT_ONCE)]
    engine.most_running = 0
    jobs = [client.submit("ROMEO:", 1000, 0.8, 0, 1.0, i, api_name="/generate") for i, client in enumerate(clients)]
    assert all(len(job.result(timeout=300)) == len("ROMEO:") + 1000 for job in jobs)
    assert engine.most_running == AT_ONCE  # one at a time would show 1


def stream_events(response: http.client.HTTPResponse):
    """(event, data) of a Gradio server-sent event stream, as they come."""
    event = None
    while line := response.readline().decode():
        if line.startswith("event: "):
            event = line[len("event: ") :].strip()
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])


def connect(url: str) -> http.client.HTTPConnection:
    address = urlsplit(url)
    return http.client.HTTPConnection(address.hostname, address.port, timeout=60)


def call(url: str, api_name: str, data: list, session_hash: str | None = None) -> tuple:
    """Start an API call over plain HTTP: (its connection, its stream of (event, data))."""
    connection = connect(url)
    body = json.dumps({"data": data, **({"session_hash": session_hash} if session_hash else {})})
    connection.request("POST", f"/gradio_api/call/{api_name}", body, {"Content-Type": "application/json"})
    event_id = json.loads(connection.getresponse().read())["event_id"]
    connection.request("GET", f"/gradio_api/call/{api_name}/{event_id}")
    return connection, stream_events(connection.getresponse())


def wait_until(done, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return done()


@pytest.mark.slow
def test_a_generation_whose_client_goes_away_leaves_the_batch(page):
    url, engine = page
    connection, events = call(url, "generate", ["ROMEO:", 2000, 0.8, 0, 1.0, 1])
    for event, data in events:
        if event == "generating" and len(data[0]) > len("ROMEO:"):
            break
    [sequence] = engine.decoder.sequences
    connection.close()  # the client is gone: Gradio closes the stream at its next update, the engine drops it
    assert wait_until(lambda: held(engine, None)["rows"] == 0)
    assert not sequence.done  # dropped, not run to its end (2000 steps of at least 2 ms each)


@pytest.mark.slow
@pytest.mark.parametrize("closed", ["page", "stream"])
def test_a_training_whose_visitor_leaves_is_killed_and_its_folder_deleted(train_server, monkeypatch, closed):
    url, models = train_server
    # Behind a proxy Gradio may notice a closed tab only at its next heartbeat (15 s by default): every second here.
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "1")
    session = f"leaving-{closed}"
    heartbeat = connect(url)
    heartbeat.request("GET", f"/gradio_api/heartbeat/{session}")
    beats = heartbeat.getresponse()
    assert beats.readline().startswith(b"data: ALIVE")
    connection, events = call(url, "train", [words(LATIN, 3000, 9), 0.5], session)
    for event, data in events:
        if event == "generating" and "step " in data[0]:  # a 30-second run is under way
            break
    job = models.jobs[session]
    shown = []  # what the stream shows afterwards
    if closed == "page":  # the tab closed: the page's unload event drops the session
        heartbeat.close()
        reader = threading.Thread(target=lambda: shown.extend(events), daemon=True)  # it ends in an error
        reader.start()
    else:  # the stream dropped while the page is open: its generator is closed at its next update
        connection.close()
    assert wait_until(lambda: job.process.poll() is not None and not job.out_dir.exists())
    assert job.process.returncode == -signal.SIGKILL  # killed, not left to score and save a model nobody gets
    if closed == "page":
        reader.join(timeout=60)
        assert shown and not [data for _, data in shown if "scoring the model" in str(data)]
    assert session not in models.jobs and models.get(session) is None
    connection.close(), heartbeat.close()


@pytest.mark.slow
@pytest.mark.parametrize(("size", "status"), [(MAX_UPLOAD_BYTES, 200), (MAX_UPLOAD_BYTES + 1, 413)])
def test_app_refuses_an_upload_over_the_train_tabs_limit_before_reading_it(server, size, status):
    boundary = "tinygpt-test-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.txt"\r\n\r\n'
    body = head.encode() + b"a" * size + f"\r\n--{boundary}--\r\n".encode()
    connection = connect(server)
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    connection.request("POST", "/gradio_api/upload", body, form)
    assert connection.getresponse().status == status
    connection.close()

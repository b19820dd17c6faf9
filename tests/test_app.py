"""The Gradio app: its functions in process, then the real server end to end with gradio_client."""

import http.server
import os
import socket
import threading
import time

import gradio as gr
import pytest
import torch
from gradio_client import Client

import app  # noqa: F401  (app.py's process settings: the page's tests run with them)
from tests.conftest import read
from tinygpt.files.checkpoint import load_model
from tinygpt.serving import backends
from tinygpt.serving.backends import TorchBackend, load_backend
from tinygpt.serving.engine import Engine
from tinygpt.serving.generate import Decoder, Sequence
from tinygpt.serving.server import switch_to_cpp
from tinygpt.web.inside import Trace, inside_view
from tinygpt.web.page import build_demo, make_generate, make_run, share_service_reachable


@pytest.fixture
def engine(tiny_model) -> Engine:
    return Engine(TorchBackend(tiny_model), max_batch=4)


def test_generate_streams_the_growing_text_and_ends_with_prompt_plus_n(engine):
    generate = make_generate(engine)
    updates = list(read(generate("ROMEO:", 400, 0.8, seed=1)))
    assert updates[-1].startswith("ROMEO:") and len(updates[-1]) == len("ROMEO:") + 400
    assert all(updates[-1].startswith(u) for u in updates)  # each update extends the previous text
    assert list(read(generate("ROMEO:", 400, 0.8, seed=1)))[-1] == updates[-1]


def test_the_page_moves_to_the_cpp_step_with_the_threads_it_is_given(engine, tiny_model):
    if backends.extension() is None:
        pytest.skip("the C++ decode step could not be built here")
    switch_to_cpp(engine, tiny_model, threads=2)
    assert len(list(read(make_generate(engine)("ROMEO:", 20, 0.8, seed=1)))[-1]) == len("ROMEO:") + 20  # a step swaps
    assert engine.decoder.backend.name == "cpp" and engine.decoder.backend.threads == 2
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # else PyTorch's spinning workers take that thread's core


def test_generate_accepts_the_floats_a_slider_sends(engine):
    assert len(list(read(make_generate(engine)("", 12.0, 0.0, 3.0, 0.9)))[-1]) == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("price: 5 pounds", 10, 0.8), "'5'"),
        (("hi", 0, 0.8), "from 1 to"),
        (("hi", 10, 3.0), "between 0"),
        (("hi", 10, 0.8, -2), "top-k must be"),
        (("hi", 10, 0.8, 0, 1.5), "top-p must be"),
        (("hi", 10, 0.8, 0, 1.0, 1.5), "seed must be a whole number"),
    ],
)
def test_bad_input_becomes_a_gradio_error(engine, args, message):
    with pytest.raises(gr.Error) as err:
        list(read(make_generate(engine)(*args)))
    assert message in str(err.value)


def test_inside_view_colours_each_new_character_and_lists_candidates(engine):
    *_, (text, trace) = read(make_run(engine)("ROMEO:", 30, 1.0, 0, 1.0, 2))
    spans, candidates = inside_view(trace)
    assert spans[0] == ("ROMEO:", None)
    assert "".join(s for s, _ in spans) == text
    assert all(-1 <= score <= 1 for _, score in spans[1:]) and len(spans) == 31
    assert len(candidates) == 10 and sum(candidates.values()) <= 1.0001
    assert list(candidates.values()) == sorted(candidates.values(), reverse=True)
    # Greedy decoding always picks the top candidate, so the chart's first bar is the character written.
    *_, (text, trace) = read(make_run(engine)("ROMEO:", 5, 0, 0, 1.0, 2))
    first = next(iter(inside_view(trace, 2)[1]))
    assert first == {"\n": "⏎", " ": "␣"}.get(text[6 + 2], text[6 + 2])
    assert inside_view(None) == ([], {})


def test_a_trace_keeps_its_own_logits_not_the_batch_they_came_from(tiny_model):
    decoder = Decoder(TorchBackend(tiny_model), max_batch=3)
    for seed in range(3):
        decoder.add(Sequence([1, 2, 3], 5, 0.8, generator=torch.Generator().manual_seed(seed)))
    trace = Trace("", tiny_model.config.vocab)
    for token in decoder.step()[:2]:  # the engine's tokens: each row's logits, from one batched pass
        trace.add(["a"], [token.logits])
    # A session keeps its trace: 65 numbers per character, not the whole batch's 3 x 65.
    assert [block.untyped_storage().nbytes() for block in trace.logits] == [4 * tiny_model.config.vocab_size] * 2


def test_build_demo_exposes_only_the_generate_api(engine):
    demo = build_demo(engine)
    public = [dep.api_name for dep in demo.fns.values() if dep.api_visibility == "public"]
    assert public == ["generate"]


def test_the_page_does_not_summarise_its_requests_after_each_one(engine):
    """Gradio's queue summarises its last 10,000 requests in a pandas table after every request (for a
    monitoring dashboard that is off): milliseconds of CPU per request on a page that has been busy."""
    demo = build_demo(engine)
    demo.queue()
    queue = demo._queue
    queue.event_analytics = {str(i): {"status": "success", "process_time": 1.0, "function": "f"} for i in range(100)}
    queue.events_recorded = 1000
    summaries = []
    original = queue._get_df
    queue._get_df = lambda records: summaries.append(len(records)) or original(records)
    for _ in range(100):
        queue.compute_analytics_summary(list(queue.event_analytics.values()))  # what it runs per finished request
        queue.events_recorded += 1
    assert summaries == []


def test_share_is_dropped_with_a_clear_line_when_gradio_live_is_out_of_reach(monkeypatch):
    import gradio.networking

    with socket.socket() as closed:  # bound, never listening: connections to it are refused at once
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(gradio.networking, "GRADIO_API_SERVER", f"http://127.0.0.1:{closed.getsockname()[1]}/")
        assert not share_service_reachable(timeout_s=2)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as answering:
        threading.Thread(target=answering.serve_forever, daemon=True).start()
        monkeypatch.setattr(gradio.networking, "GRADIO_API_SERVER", f"http://127.0.0.1:{answering.server_port}/")
        assert share_service_reachable(timeout_s=2)  # any answer (here 501) means the service is there
        answering.shutdown()


# --- The real server (conftest's `server`: python app.py in a subprocess) -----------------------------


@pytest.mark.slow
def test_api_streams_and_returns_the_final_text(server):
    client = Client(server, verbose=False)
    job = client.submit("ROMEO:", 300, 0.8, 0, 1.0, 7, api_name="/generate")
    final = job.result(timeout=60)
    streamed = job.outputs()
    assert final.startswith("ROMEO:") and len(final) == len("ROMEO:") + 300
    assert streamed[-1] == final and all(final.startswith(s) for s in streamed)


@pytest.mark.slow
def test_api_takes_every_parameter_by_name_and_the_seed_reproduces(server, tiny_weights):
    client = Client(server, verbose=False)
    params = dict(prompt="JULIET:", max_new_tokens=40, temperature=0.9, top_k=5, top_p=0.8, seed=11)
    text = client.predict(**params, api_name="/generate")
    assert client.predict(**params, api_name="/generate") == text
    assert client.predict(**{**params, "seed": 12}, api_name="/generate") != text
    # The server's answer is the library's answer for the same settings (float32, on PyTorch or the C++
    # step: the same function).
    engine = Engine(load_backend(load_model(tiny_weights)))
    assert text == list(read(make_generate(engine)(*params.values())))[-1]


@pytest.mark.slow
def test_api_bad_input_is_a_clear_error_and_the_server_keeps_serving(server):
    client = Client(server, verbose=False)
    for args, message in [
        (("hello \U0001f600", 10), "unsupported character"),
        (("hi", 5000), "from 1 to"),
        (("hi", 10, -1.0), "temperature must be"),
        (("hi", 10, 0.8, 0, 0.0), "top-p must be above 0"),
    ]:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/generate")
    assert len(client.predict("hi", 10, api_name="/generate")) == 12


def test_closing_a_run_frees_its_place_in_the_engine(engine):
    """Stop and a closed tab: Gradio closes the generator; the engine must drop the generation."""
    run = read(make_run(engine)("ROMEO:", 2000, 0.8, 0, 1.0, 1))
    next(run)
    [sequence] = engine.decoder.sequences
    run.close()
    for _ in range(200):  # the engine lets it go at its next step
        if not engine.decoder.sequences:
            break
        time.sleep(0.01)
    assert engine.decoder.sequences == []
    assert not sequence.done  # dropped, not run to its end (the tiny model writes 2000 characters in ~1 s)


def test_the_stop_button_cancels_the_generate_event(engine):
    """Wiring only; tests/test_serving.py cancels a running generation through the server."""
    demo = build_demo(engine)
    write = next(i for i, dep in demo.fns.items() if dep.name == "write")
    stop = [dep for dep in demo.fns.values() if dep.cancels]
    assert len(stop) == 1 and stop[0].cancels == [write]

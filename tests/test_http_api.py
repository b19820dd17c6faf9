"""The OpenAI-style HTTP API (tinygpt.serving.http_api): its answers checked against the page's for the same
request, its rows watched in the engine the page shares, its errors, and the official `openai`
client streaming from `python app.py`."""

import http.client
import json
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import torch
from gradio_client import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import BadRequestError, OpenAI

from app import QUEUE_SIZE, build_demo
from tests.conftest import free_port, start_app, stop_app
from tinygpt.model.config import GPTConfig
from tinygpt.model.gpt import GPT
from tinygpt.serving.backends import TorchBackend
from tinygpt.serving.engine import Engine
from tinygpt.serving.http_api import MAX_BODY_BYTES, ChoiceText, routes

pytestmark = pytest.mark.slow

API_QUEUE = 2  # generations that may wait for a row before the API answers 429
ROWS = 2


class SlowPasses:
    """A hook on the model's output layer that sleeps `delay` seconds per forward pass, so that a long
    generation is still running while the test looks at the engine."""

    def __init__(self, model) -> None:
        self.delay = 0.0
        model.lm_head.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        if self.delay:
            time.sleep(self.delay)


@pytest.fixture(scope="module")
def page(tokenizer):
    """The app's page and the API on one in-process server, one engine of ROWS rows:
    (URL, the engine, the pass hook)."""
    torch.manual_seed(0)
    config = GPTConfig(vocab=tokenizer.vocab, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    model = GPT(config).eval()
    with torch.no_grad():  # peaked distributions: texts that differ from prompt to prompt
        for p in model.parameters():
            p.mul_(3)
    passes = SlowPasses(model)
    engine = Engine(TorchBackend(model), max_batch=ROWS)
    demo = build_demo(engine)
    demo.queue(max_size=QUEUE_SIZE)
    port = free_port()
    api = routes(engine, "tiny", API_QUEUE)  # as app.py mounts it
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                app_kwargs={"routes": api})  # fmt: skip
    yield f"http://127.0.0.1:{port}/", engine, passes
    passes.delay = 0.0
    demo.close()


def connect(url: str) -> http.client.HTTPConnection:
    address = urlsplit(url)
    return http.client.HTTPConnection(address.hostname, address.port, timeout=60)


def send(url: str, body: dict | bytes) -> http.client.HTTPConnection:
    """POST `body` to /v1/completions (a dict is sent as JSON); returns the connection, nothing read."""
    connection = connect(url)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", "/v1/completions", data, {"Content-Type": "application/json"})
    return connection


def post(url: str, body: dict | bytes) -> tuple[http.client.HTTPConnection, object]:
    """`send`, then the response's status and headers; its body unread."""
    connection = send(url, body)
    return connection, connection.getresponse()


def answer(url: str, body: dict | bytes) -> tuple[int, dict]:
    connection, response = post(url, body)
    status, data = response.status, response.read()
    connection.close()
    assert b"Traceback" not in data
    return status, json.loads(data)


def events(response) -> Iterator[dict | str]:
    """The server-sent events of a streamed answer: each `data:` line's JSON, and "[DONE]"."""
    for line in response:
        if line.startswith(b"data: "):
            data = line[len(b"data: ") :].strip()
            yield "[DONE]" if data == b"[DONE]" else json.loads(data)


def streamed(url: str, body: dict) -> list[dict | str]:
    connection, response = post(url, body | {"stream": True})
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    received = list(events(response))
    connection.close()
    return received


def page_text(url: str, prompt: str, chars: int, temperature: float, top_k: int, seed: int) -> str:
    """What the page's own API (the Write tab's generation) adds to `prompt` with these settings."""
    text = Client(url, verbose=False).predict(prompt, chars, temperature, top_k, 1.0, seed, api_name="/generate")
    assert text.startswith(prompt)
    return text[len(prompt) :]


def wait_until(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout_s} s"
        time.sleep(0.01)


def test_a_stream_carries_only_new_text_and_a_seed_gives_the_pages_text(page):
    url, _, _ = page
    request = {"prompt": "ROMEO:", "max_tokens": 60, "temperature": 0.9, "top_k": 5, "seed": 3}
    received = streamed(url, request | {"stream_options": {"include_usage": True}})
    assert received[-1] == "[DONE]"
    chunks, usage = received[:-2], received[-2]
    assert all(c["object"] == "text_completion" and c["model"] == "tiny" and c["usage"] is None for c in chunks)
    assert len({c["id"] for c in received[:-1]}) == 1
    assert all(c["choices"][0]["text"] for c in chunks)  # every event brings new text
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == page_text(url, "ROMEO:", 60, 0.9, 5, 3)
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 6, "completion_tokens": 60,
                                                          "total_tokens": 66}  # fmt: skip
    status, whole = answer(url, request)  # not streamed: the same text in one answer
    assert status == 200 and whole["choices"] == [{"index": 0, "text": text, "logprobs": None,
                                                   "finish_reason": "length"}]  # fmt: skip


def test_n_choices_are_rows_of_the_batch_seeded_as_the_page_with_seed_plus_i(page):
    url, _, _ = page
    status, whole = answer(url, {"prompt": "KING", "max_tokens": 30, "temperature": 0.9, "seed": 5, "n": 3})
    assert status == 200
    assert [c["text"] for c in whole["choices"]] == [page_text(url, "KING", 30, 0.9, 0, 5 + i) for i in range(3)]
    assert whole["usage"]["completion_tokens"] == 90
    received = streamed(url, {"prompt": "KING", "max_tokens": 30, "temperature": 0.9, "seed": 5, "n": 3})
    texts = ["", "", ""]
    for chunk in received[:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
    assert texts == [c["text"] for c in whole["choices"]]


def test_a_stop_string_ends_the_text_before_it(page):
    url, _, _ = page
    greedy = answer(url, {"prompt": "First Citizen:\n", "max_tokens": 60, "temperature": 0})[1]["choices"][0]["text"]
    stop = greedy[25:28]
    expected = greedy[: greedy.index(stop)]
    request = {"prompt": "First Citizen:\n", "max_tokens": 60, "temperature": 0, "stop": ["never here", stop]}
    whole = answer(url, request)[1]
    assert whole["choices"][0]["text"] == expected and whole["choices"][0]["finish_reason"] == "stop"
    chunks = streamed(url, request)[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_text_that_may_begin_a_stop_string_is_held_back_until_it_does_not():
    choice = ChoiceText(["cXY", "Z"], max_tokens=100)
    assert choice.add("abc") == "ab"  # "c" may begin "cXY"
    assert choice.add("X") == ""
    assert choice.add("q") == "cXq"  # it did not
    assert choice.add("cX") == ""
    assert choice.add("Yrest") == "" and choice.finish_reason == "stop" and choice.text == "abcXq"
    last = ChoiceText(["cXY"], max_tokens=4)
    assert last.add("abc") == "ab" and last.add("X") == "cX" and last.finish_reason == "length"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": 5}, 400, "prompt"),
        ({"prompt": "日本"}, 400, "prompt"),  # outside the model's alphabet
        ({"prompt": "x" * 10_001}, 400, "prompt"),
        ({"max_tokens": "many"}, 400, "max_tokens"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 2.5}, 400, "max_tokens"),
        ({"temperature": 3}, 400, "temperature"),
        ({"temperature": True}, 400, "temperature"),
        ({"top_k": -2}, 400, "top_k"),
        ({"top_p": 0}, 400, "top_p"),
        ({"n": 17}, 400, "n"),
        ({"seed": -1}, 400, "seed"),
        ({"seed": "one"}, 400, "seed"),
        ({"stream": "yes"}, 400, "stream"),
        ({"stop": 3}, 400, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"stop": [""]}, 400, "stop"),
        ({"stream_options": []}, 400, "stream_options"),
        (b'{"prompt": "ROMEO:"', 400, None),  # malformed JSON
        (b'{"max_tokens": NaN}', 400, "max_tokens"),
        (b"[" * 50_000 + b"]" * 50_000, 400, None),  # JSON nested too deep for the parser
        (b'{"prompt": "\xff"}', 400, None),  # not UTF-8
        (b'["ROMEO:"]', 400, None),
        (b'{"prompt": "' + b"a" * MAX_BODY_BYTES + b'"}', 413, None),
    ],
)
def test_bad_input_is_answered_with_an_error_naming_the_field(page, body, status, param):
    url, _, _ = page
    got, data = answer(url, body)
    assert got == status
    assert set(data["error"]) == {"message", "type", "param", "code"} and data["error"]["param"] == param
    assert data["error"]["type"] == "invalid_request_error" and data["error"]["message"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
FIELDS = ["prompt", "max_tokens", "temperature", "top_k", "top_p", "seed", "n", "stop", "stream", "stream_options"]
PLAUSIBLE = {"prompt": st.text(max_size=30), "max_tokens": st.integers(-2, 40), "n": st.integers(-1, 5),
             "temperature": st.floats(-1, 3), "top_p": st.floats(-0.5, 1.5), "top_k": st.integers(-3, 70),
             "seed": st.integers(-5, 2**32), "stop": st.lists(st.text(max_size=3), max_size=5) | st.text(max_size=3),
             "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
             }  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional={name: PLAUSIBLE[name] | JSON for name in FIELDS}))
def test_any_json_request_gets_its_text_or_a_clear_error(page, body):
    url, _, _ = page
    connection, response = post(url, body)
    data = response.read()
    connection.close()
    assert response.status in (200, 400, 429) and b"Traceback" not in data
    if response.status != 200:
        error = json.loads(data)["error"]
        assert error["message"] and error["param"] in (None, *FIELDS)
    elif body.get("stream") is True:
        assert data.rstrip().endswith(b"data: [DONE]")
    else:
        limit = 16 if body.get("max_tokens") is None else body["max_tokens"]  # OpenAI's default
        assert all(len(choice["text"]) <= limit for choice in json.loads(data)["choices"])


def test_unknown_fields_and_nulls_are_ignored(page):
    url, _, _ = page
    status, data = answer(url, {"prompt": "ROMEO:", "max_tokens": 5, "model": "any", "echo": None, "user": "u",
                                "logit_bias": {}, "top_k": -1, "seed": None, "temperature": None})  # fmt: skip
    assert status == 200 and len(data["choices"][0]["text"]) == 5


def test_health_and_models(page):
    url, engine, _ = page
    connection = connect(url)
    connection.request("GET", "/health")
    health = json.loads(connection.getresponse().read())
    assert health == {"status": "ok", "backend": "torch", "running": 0, "waiting": 0, "max_batch": ROWS}
    connection.request("GET", "/v1/models")
    models = json.loads(connection.getresponse().read())
    connection.close()
    assert [m["id"] for m in models["data"]] == ["tiny"] and models["object"] == "list"
    assert models["data"][0]["max_model_len"] == engine.decoder.config.block_size


def first_event(url: str, body: dict) -> tuple[http.client.HTTPConnection, object]:
    """A long streamed generation, once its first text has arrived (it holds a row)."""
    connection, response = post(url, body | {"stream": True})
    assert response.status == 200 and isinstance(next(events(response)), dict)
    return connection, response


def test_the_api_and_the_page_share_the_batch_and_a_full_queue_answers_429(page):
    url, engine, passes = page
    passes.delay = 0.005  # 2000 characters take > 10 s: still running while the test looks
    long = {"prompt": "ROMEO:", "max_tokens": 2000}
    try:
        api_stream = first_event(url, long)
        visitor = Client(url, verbose=False).submit("JULIET:", 2000, 0.8, 0, 1.0, 1, api_name="/generate")
        wait_until(lambda: engine.running == ROWS, "both rows taken (API and page)")
        waiting = [post(url, long | {"stream": True}) for _ in range(API_QUEUE)]  # answered when a row frees
        wait_until(lambda: engine.waiting == API_QUEUE, "the API's queue full")
        status, data = answer(url, {"prompt": "ROMEO:", "max_tokens": 5})
        assert status == 429 and data["error"]["type"] == "rate_limit_error"
        sequences = list(engine.decoder.sequences)
        visitor.cancel()
        for connection, _ in [api_stream, *waiting]:
            connection.close()
        wait_until(lambda: engine.running == engine.waiting == 0, "every row and place freed")
        assert all(s.produced < 2000 for s in sequences)  # they left early: nobody ran on unseen
    finally:
        passes.delay = 0.0


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_frees_its_row(page, stream):
    url, engine, passes = page
    passes.delay = 0.005
    try:
        connection = send(url, {"prompt": "ROMEO:", "max_tokens": 2000, "stream": stream})
        wait_until(lambda: engine.running == 1, "running")
        (sequence,) = engine.decoder.sequences
        connection.close()
        wait_until(lambda: engine.running == 0, "its row freed")
        assert sequence.produced < 2000
    finally:
        passes.delay = 0.0


@pytest.fixture(scope="module")
def app_server(tiny_weights, tmp_path_factory) -> Iterator[str]:
    """`python app.py` on the tiny model, on PyTorch throughout (the texts below are compared with each
    other: no switch of backend between them); stopped by its PID afterwards."""
    process, url = start_app(tiny_weights, tmp_path_factory.mktemp("api") / "app.log", "--backend", "torch")
    yield url
    stop_app(process)


def test_the_openai_client_streams_from_the_app(app_server, tokenizer):
    server = app_server
    client = OpenAI(base_url=f"{server}v1", api_key="unused", max_retries=0)
    (model,) = client.models.list().data
    settings = {"model": model.id, "prompt": "ROMEO:\n", "max_tokens": 50, "temperature": 0.8, "seed": 7,
                "extra_body": {"top_k": 20}}  # fmt: skip
    chunks = list(client.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(text) == 50 and set(text) <= set(tokenizer.vocab)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 50 and chunks[-1].usage.prompt_tokens == len("ROMEO:\n")
    whole = client.completions.create(**settings)
    assert whole.choices[0].text == text and whole.choices[0].finish_reason == "length"
    with pytest.raises(BadRequestError) as refused:
        client.completions.create(model=model.id, prompt="ROMEO:", max_tokens=5000)
    assert refused.value.body["param"] == "max_tokens"
    connection = connect(server)
    connection.request("GET", "/health")
    assert json.loads(connection.getresponse().read())["backend"] in ("torch", "cpp")
    connection.close()

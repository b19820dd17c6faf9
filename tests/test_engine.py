"""The batching engine (tinygpt.engine): many generations in one decode loop give each the text it
would get alone; they join, leave and cancel at step boundaries; and the API serves concurrent clients."""

import threading

import pytest
import torch
from gradio_client import Client

from tests.conftest import read
from tinygpt.model.gpt import GPT
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving import backends
from tinygpt.serving.backends import CppBackend, TorchBackend
from tinygpt.serving.engine import STREAM_CROWD, Engine
from tinygpt.serving.generate import complete, start

# (prompt, temperature, top_k, top_p, seed): different lengths (one longer than the 16-character
# window), greedy and sampled, with and without filters, some with the same settings and prompt.
REQUESTS = [
    ("ROMEO:", 1.0, None, None, 1),
    ("ROMEO:", 1.0, None, None, 6),
    ("To be, or not to be, that is the question", 0.8, None, None, 2),
    ("A", 0.0, None, None, 3),
    ("First Citizen:\n", 1.2, 5, None, 4),
    ("O Romeo", 0.9, None, 0.8, 5),
    ("JULIET:", 1.0, None, None, 7),
]
N = 45  # past the 16-character window, several times


def alone(backend, tokenizer: CharTokenizer, request: tuple, n: int = N) -> str:
    prompt, temperature, top_k, top_p, seed = request
    text, steps = complete(backend, tokenizer, prompt, n, temperature, seed, top_k, top_p)
    return text + "".join(step.chars[0] for step in steps)


def through(engine: Engine, tokenizer: CharTokenizer, request: tuple, n: int = N):
    prompt, temperature, top_k, top_p, seed = request
    text, sequences = start(tokenizer, prompt, n, temperature, seed, top_k, top_p)
    return text, read(engine.generate(sequences[0]))


def collect(streams: list, vocab: str) -> list[str]:
    """Read every stream to the end, round-robin (the way concurrent readers would)."""
    texts = [text for text, _ in streams]
    live = dict(enumerate(stream for _, stream in streams))
    while live:
        for i, stream in list(live.items()):
            try:
                texts[i] += "".join(vocab[t.token] for t in next(stream))
            except StopIteration:
                del live[i]
    return texts


def backend_named(name: str, model: GPT):
    if name == "cpp":
        if backends.extension() is None:
            pytest.skip("the C++ decode step could not be built here")
        return CppBackend(model)
    return TorchBackend(model)


@pytest.mark.parametrize("name", ["torch", "cpp"])
@pytest.mark.parametrize("max_batch", [1, 3, 7])
def test_batched_text_is_the_text_each_request_gets_alone(sharp_model, tokenizer, name, max_batch):
    backend = backend_named(name, sharp_model)
    expected = [alone(backend, tokenizer, request) for request in REQUESTS]
    engine = Engine(backend, max_batch)
    assert collect([through(engine, tokenizer, request) for request in REQUESTS], tokenizer.vocab) == expected
    assert len(set(expected)) == len(expected)


def test_requests_joining_mid_flight_do_not_change_the_others(sharp_model, tokenizer):
    backend = TorchBackend(sharp_model)
    expected = [alone(backend, tokenizer, request) for request in REQUESTS]
    engine = Engine(backend, max_batch=4)
    first = through(engine, tokenizer, REQUESTS[0])
    text, stream = first
    text += "".join(tokenizer.vocab[t.token] for t in next(stream))  # running before the others arrive
    later = [through(engine, tokenizer, request) for request in REQUESTS[1:]]
    assert collect([(text, stream), *later], tokenizer.vocab) == expected


def test_cancelling_one_leaves_the_others_alone_and_frees_its_row(sharp_model, tokenizer):
    backend = TorchBackend(sharp_model)
    expected = [alone(backend, tokenizer, request, 400) for request in REQUESTS[:3]]
    engine = Engine(backend, max_batch=2)
    streams = [through(engine, tokenizer, request, 400) for request in REQUESTS[:3]]  # the third must wait
    _, cancelled = streams[1]
    next(cancelled)
    cancelled.close()  # what Gradio does on Stop or a closed tab
    texts = collect([streams[0], streams[2]], tokenizer.vocab)  # the third can only finish if the row was freed
    assert texts == [expected[0], expected[2]]
    assert engine.decoder.sequences == []


def test_a_finished_generation_frees_its_row_for_a_waiting_one(sharp_model, tokenizer):
    backend = TorchBackend(sharp_model)
    expected = [alone(backend, tokenizer, request, 20) for request in REQUESTS[:3]]
    engine = Engine(backend, max_batch=2)
    texts = []

    def read_all() -> None:  # on a thread: a request that never gets a row would wait for ever
        texts.extend(collect([through(engine, tokenizer, request, 20) for request in REQUESTS[:3]], tokenizer.vocab))

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert texts == expected  # the third ran in a row one of the first two left
    assert engine.most_running == 2 and engine.held() == {"rows": 0, "waiting": 0, "most_running": 2}
    engine.close()


def test_streams_update_less_often_only_when_the_engine_is_crowded(sharp_model, tokenizer):
    engine = Engine(TorchBackend(sharp_model), max_batch=2 * STREAM_CROWD)
    assert engine.pace(0.05) == 0.05
    streams = [through(engine, tokenizer, REQUESTS[0], 2000) for _ in range(2 * STREAM_CROWD)]
    for _, stream in streams:
        next(stream)  # each has joined the batch once it has its first token
    assert engine.pace(0.05) == pytest.approx(0.1)
    for _, stream in streams[1:]:
        stream.close()
    for _ in streams[0][1]:  # the others leave at the next step boundary
        if engine.pace(0.05) == 0.05:
            break
    else:
        pytest.fail("the pace stayed slow after the crowd left")
    streams[0][1].close()


def test_a_paced_stream_hears_the_end_at_once(sharp_model, tokenizer):
    # A stream waits `interval` after each update; the end must cut that wait short, or a crowded page
    # holds every finished answer back (and its client's next request) for up to a pause.
    engine = Engine(TorchBackend(sharp_model))
    _, sequences = start(tokenizer, "ROMEO:", N, 1.0, 1)
    received = []

    def listen() -> None:
        for tokens in read(engine.generate(sequences[0], interval=3600.0)):
            received.extend(tokens)

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    reader.join(timeout=60)  # a stream that slept its full pause would still be asleep
    assert not reader.is_alive()
    assert len(received) == N


def test_switching_backend_mid_generation_keeps_the_text(sharp_model, tokenizer):
    if backends.extension() is None:
        pytest.skip("the C++ decode step could not be built here")
    model = sharp_model
    reference = TorchBackend(model, cache_dtype=torch.int8)  # the function the C++ step computes
    expected = [alone(reference, tokenizer, request) for request in REQUESTS]
    engine = Engine(reference, max_batch=12)
    streams = [through(engine, tokenizer, request) for request in REQUESTS]
    texts = [text + "".join(tokenizer.vocab[t.token] for t in next(stream)) for text, stream in streams]
    engine.use(CppBackend(model, threads=2))  # what the page does once the C++ step is built; 8+ rows split
    assert collect(list(zip(texts, (s for _, s in streams), strict=True)), tokenizer.vocab) == expected
    assert engine.decoder.backend.name == "cpp"


class FailingOnce:
    """A backend whose third call raises, as a bug or an out-of-memory error would."""

    def __init__(self, backend) -> None:
        self.backend, self.model, self.name, self.calls = backend, backend.model, "failing", 0
        self.cache_dtype = backend.cache_dtype

    def __call__(self, *args):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("planted failure")
        return self.backend(*args)


def test_a_failed_step_fails_its_requests_and_the_engine_keeps_serving(sharp_model, tokenizer, capsys):
    backend = TorchBackend(sharp_model)
    engine = Engine(FailingOnce(backend), max_batch=2)
    with pytest.raises(RuntimeError, match="planted failure"):
        collect([through(engine, tokenizer, REQUESTS[0])], tokenizer.vocab)
    assert "a step failed (RuntimeError: planted failure)" in capsys.readouterr().err
    after = collect([through(engine, tokenizer, REQUESTS[1])], tokenizer.vocab)
    assert after == [alone(backend, tokenizer, REQUESTS[1])]


@pytest.mark.slow
def test_the_api_answers_concurrent_clients_each_with_prompt_plus_exactly_n(server):
    """Twelve clients at once against python app.py, each with its own length and settings."""
    results, errors = {}, []

    def ask(i: int) -> None:
        prompt, temperature, top_k, top_p, seed = REQUESTS[i % len(REQUESTS)]
        try:
            client = Client(server, verbose=False)
            text = client.predict(prompt, 10 + 7 * i, temperature, top_k or 0, top_p or 1.0, seed, api_name="/generate")
            results[i] = (prompt, text)
        except Exception as err:  # reported below, with the others
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 12
    for i, (prompt, text) in results.items():
        assert text.startswith(prompt) and len(text) == len(prompt) + 10 + 7 * i


def test_closing_the_engine_ends_running_requests_with_an_error(sharp_model, tokenizer):
    engine = Engine(TorchBackend(sharp_model), max_batch=1)
    running = through(engine, tokenizer, REQUESTS[0], 2000)
    waiting = through(engine, tokenizer, REQUESTS[1], 2000)
    next(running[1])
    engine.close()
    for _, stream in (running, waiting):
        with pytest.raises(RuntimeError, match="closed"):
            collect([("", stream)], tokenizer.vocab)

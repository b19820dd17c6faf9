"""Hostile input through the real API: `python app.py` (conftest's `server`), called as a stranger would.

Every call must end in one of two ways: a well-formed result (the cleaned prompt followed by exactly
max_new_tokens characters of the model's alphabet) or a clear error (one of our messages, not a stack
trace and not a bare "Error"). After each property the server must still answer a normal request.

gradio_client cannot send NaN or infinity (it refuses them before sending), so those, and other
wrong types, are posted as raw JSON to Gradio's HTTP API: POST /gradio_api/call/generate returns an
event id, GET /gradio_api/call/generate/<id> streams the answer as server-sent events.
"""

from __future__ import annotations

import json
import math
import re
import time

import httpx
import pytest
from gradio_client import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tinygpt.files.paths import DEFAULT_DATA
from tinygpt.model.tokenizer import SUBSTITUTES, CharTokenizer, UnknownCharactersError
from tinygpt.serving.generate import MAX_NEW_TOKENS, MAX_PROMPT_CHARS
from tinygpt.training.data import load_text

pytestmark = pytest.mark.slow

MAX_SEED = 2**31 - 1  # app.py's limit
# The messages our code raises (tinygpt.generate and app.py); anything else is not a "clear error".
OUR_ERRORS = re.compile(
    "|".join(
        [
            r"must be a whole number (from \d+ to \d+|\d+ or more|up to \d+), not ",
            r"must be a number, not ",
            r"must be between .+ and .+, not ",
            r"^top-p must be above 0",
            r"^unsupported character\(s\): .+ The model only knows its training alphabet\.$",
            r"^the prompt is [\d,]+ characters long; the limit is 10,000$",
            r"^the prompt must be text, not \w+$",
        ]
    ),
    re.DOTALL,
)
# Hypothesis: few examples (each is a request) and no per-example deadline (the machine is shared).
FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- Helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: str) -> Client:
    return Client(server, verbose=False)


def expected_prompt(tokenizer: CharTokenizer, prompt: str | None) -> str | None:
    """The cleaned prompt the answer must start with, or None when the prompt must be refused."""
    prompt = prompt or ""
    if len(prompt) > MAX_PROMPT_CHARS:
        return None
    try:
        return tokenizer.normalize(prompt)
    except UnknownCharactersError:
        return None


def assert_well_formed(text: object, cleaned: str, n: int, vocab: str) -> None:
    assert isinstance(text, str), f"not text: {text!r}"
    assert text[: len(cleaned)] == cleaned, "the answer does not start with the cleaned prompt"
    added = text[len(cleaned) :]
    assert len(added) == n, f"{len(added)} new characters, not {n}"
    assert set(added) <= set(vocab), f"characters outside the alphabet: {set(added) - set(vocab)}"


def assert_clear(message: object) -> None:
    assert isinstance(message, str) and OUR_ERRORS.search(message), f"not one of our messages: {message!r}"


def call(client: Client, *args: object) -> tuple[str, str]:
    """("ok", text) or ("error", message) from the /generate API through gradio_client."""
    try:
        return "ok", client.predict(*args, api_name="/generate")
    except Exception as err:  # gradio_client's AppError carries the server's message
        return "error", str(err)


def call_raw(url: str, data: list) -> tuple[str, object]:
    """Post `data` as raw JSON (NaN and Infinity written as such) and read the event stream to its end.

    Returns ("ok", text), ("error", message) or ("rejected", HTTP status). The timeouts turn a hang
    into a failure.
    """
    api = url.rstrip("/") + "/gradio_api/call/generate"
    body = json.dumps({"data": data})  # allow_nan is on by default: NaN, Infinity, -Infinity
    with httpx.Client(timeout=30) as http:
        posted = http.post(api, content=body, headers={"content-type": "application/json"})
        if posted.status_code != 200:
            return "rejected", posted.status_code
        event = None
        with http.stream("GET", f"{api}/{posted.json()['event_id']}") as answer:
            for line in answer.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event in ("complete", "error"):
                    value = json.loads(line.removeprefix("data: "))
                    if event == "complete":
                        return "ok", value[0]
                    return "error", value.get("error") if isinstance(value, dict) else value
    raise AssertionError("the event stream ended without a result or an error")


def assert_healthy(client: Client) -> None:
    """The server still answers a normal request, well-formed."""
    text = client.predict("ROMEO:\n", 20, 0.8, 0, 1.0, 1, api_name="/generate")
    assert text.startswith("ROMEO:\n") and len(text) == len("ROMEO:\n") + 20


def _number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 1e300 and math.isfinite(value)  # int comparison first: 10**400 has no float


def _whole(value: object, low: float, high: float) -> bool:
    return _number(value) and value == int(value) and low <= value <= high


# --- Strategies ------------------------------------------------------------------------------------

# Characters a person might type: the alphabet, those with a substitute, accents, controls, emoji...
VOCAB = CharTokenizer.from_text(load_text(DEFAULT_DATA)).vocab  # the tiny test model's alphabet too
TYPED = st.sampled_from(
    list(VOCAB)
    + sorted({c for key in SUBSTITUTES for c in key})
    + ["é", "Ñ", "ﬁ", "Ω", "\x00", "\x1b", "\x7f", "\u200b", "\ufeff", "\u2028", "🙂", "3", "7"]
)
PROMPTS = st.one_of(
    st.none(),
    st.text(max_size=40),  # any Unicode (but lone surrogates, which gradio_client cannot encode)
    st.text(TYPED, max_size=300),
    # Around the 10,000 limit, and far past it (up to 1 MB).
    st.builds(lambda c, n: c * n, TYPED, st.integers(MAX_PROMPT_CHARS - 3, MAX_PROMPT_CHARS + 3)),
    st.builds(lambda c, n: c * n, TYPED, st.integers(MAX_PROMPT_CHARS, 1_000_000)),
)
BIG = 10**400  # beyond float range: once made math.isfinite raise OverflowError


WRONG_TYPES = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "value", "data"]), st.integers(), max_size=2),
)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
COUNTS = st.one_of(st.integers(-3, 30), st.sampled_from([0, MAX_NEW_TOKENS + 1, 10**9, -BIG, BIG]), FINITE,
                   st.floats(-3, 30), WRONG_TYPES)  # fmt: skip
TEMPERATURES = st.one_of(st.floats(-0.5, 2.5), st.integers(-3, 3), st.sampled_from([BIG, -BIG]), FINITE, WRONG_TYPES)
TOP_KS = st.one_of(st.integers(-3, 80), st.sampled_from([BIG, -BIG]), st.floats(-3, 80), FINITE, WRONG_TYPES)
TOP_PS = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0, BIG, -BIG]), FINITE, WRONG_TYPES)
SEEDS = st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([MAX_SEED, MAX_SEED + 1, BIG]), FINITE, WRONG_TYPES)


def settings_allowed(n: object, temperature: object, top_k: object, top_p: object, seed: object) -> bool | None:
    """The documented limits, written out independently of the code under test. None: either answer is fine
    (a bool seed: Python counts it as a whole number, and refusing it would be as reasonable)."""
    if isinstance(seed, bool):
        return None
    return (
        _whole(n, 1, MAX_NEW_TOKENS)
        and _number(temperature)
        and 0 <= temperature <= 2
        and (top_k is None or _whole(top_k, 0, math.inf))  # None, like 0, turns the filter off
        and (top_p is None or (_number(top_p) and 0 < top_p <= 1))
        and (seed is None or _whole(seed, 0, MAX_SEED))
    )


# --- Properties ------------------------------------------------------------------------------------


def test_any_prompt_gives_a_well_formed_result_or_a_clear_error(client, tokenizer):
    @FEW
    @given(prompt=PROMPTS, n=st.integers(1, 8))
    @example(prompt="O Romeo\u2019s \u201cdream\u201d\u2014\tend\u2026\r\n", n=3)  # substitutes all round
    @example(prompt="\x00\x01\x1f", n=1)
    def check(prompt: str | None, n: int) -> None:
        outcome, value = call(client, prompt, n, 0.8, 0, 1.0, 5)
        cleaned = expected_prompt(tokenizer, prompt)
        if cleaned is None:
            assert outcome == "error", f"accepted a prompt it should refuse: {prompt[:80]!r}"
            assert_clear(value)
        else:
            assert outcome == "ok", f"refused a usable prompt {prompt[:80]!r}: {value}"
            assert_well_formed(value, cleaned, n, tokenizer.vocab)

    check()
    assert_healthy(client)


# Usable settings, each of which a property may swap for a hostile value.
USABLE = (
    st.integers(1, 8),
    st.one_of(st.just(0.0), st.floats(0, 2, exclude_min=True)),
    st.integers(0, 70),
    st.floats(0, 1, exclude_min=True),
    st.one_of(st.none(), st.integers(0, MAX_SEED)),
)


@st.composite
def some_hostile(draw: st.DrawFn, usable: tuple, hostile: tuple) -> list:
    """One value per slot: usable ones with a few (often just one) swapped for hostile ones, so every
    check gets reached instead of all calls stopping at the first."""
    swapped = draw(st.sets(st.integers(0, len(usable) - 1)))
    return [draw(h if i in swapped else u) for i, (u, h) in enumerate(zip(usable, hostile, strict=True))]


def test_any_settings_give_a_well_formed_result_or_a_clear_error(client, tokenizer):
    @settings(FEW, max_examples=40)
    @given(values=some_hostile(USABLE, (COUNTS, TEMPERATURES, TOP_KS, TOP_PS, SEEDS)))
    @example(values=[1, 0, 0, 1, None])  # the edges that are allowed
    @example(values=[5.0, 2, 1, 1e-9, -MAX_SEED])
    @example(values=[5, 0.8, BIG, 0.5, 0])  # top-k beyond the alphabet: no filter
    @example(values=[5, -0.0, None, None, MAX_SEED])
    def check(values: list) -> None:
        outcome, value = call(client, "ROMEO:", *values)
        allowed = settings_allowed(*values)
        if outcome == "ok":
            assert allowed is not False, f"accepted {values}"
            assert_well_formed(value, "ROMEO:", int(values[0]), tokenizer.vocab)
        else:
            assert allowed is not True, f"refused {values}: {value}"
            assert_clear(value)

    check()
    assert_healthy(client)


# Raw JSON: NaN and infinity (which gradio_client cannot send), wrong types, lone surrogates.
HOSTILE = st.one_of(st.floats(), st.integers(-BIG, BIG), WRONG_TYPES)  # st.floats(): NaN and +-Infinity too
RAW_HOSTILE = (
    st.one_of(st.text(st.characters(exclude_categories=[]), max_size=20), HOSTILE),
    HOSTILE,
    HOSTILE,
    HOSTILE,
    HOSTILE,
    HOSTILE,
)


def test_raw_json_nan_infinity_and_wrong_types_get_a_result_or_a_clear_error(server, client, tokenizer):
    @FEW
    @given(data=some_hostile((st.text(st.sampled_from(VOCAB), max_size=20), *USABLE), RAW_HOSTILE))
    @example(data=["ROMEO:", 5, math.nan, 0, 1.0, 3])
    @example(data=["ROMEO:", math.inf, 0.8, 0, 1.0, 3])
    @example(data=["ROMEO:", 5, -math.inf, 0, 1.0, 3])
    @example(data=["ROMEO:", 5, 0.8, math.nan, 1.0, 3])
    @example(data=["ROMEO:", 5, 0.8, 0, math.inf, 3])
    @example(data=[["ROMEO:"], "5", {"t": 1}, [0], "1", None])
    @example(data=["\ud800 lone surrogate", 5, 0.8, 0, 1.0, 3])
    def check(data: list) -> None:
        outcome, value = call_raw(server, data)
        prompt, n = data[0], data[1]
        if outcome == "ok":
            assert prompt is None or isinstance(prompt, str), f"accepted a {type(prompt).__name__} prompt"
            cleaned = expected_prompt(tokenizer, prompt)
            assert cleaned is not None, f"accepted a prompt it should refuse: {prompt!r}"
            assert settings_allowed(*data[1:]) is not False, f"accepted {data[1:]}"
            assert_well_formed(value, cleaned, int(n), tokenizer.vocab)
        else:
            assert outcome == "error", f"the request itself was rejected (HTTP {value})"
            assert_clear(value)

    check()
    assert_healthy(client)


# --- Examples --------------------------------------------------------------------------------------


def test_a_megabyte_prompt_is_refused_quickly_with_the_limit(client):
    start = time.perf_counter()
    with pytest.raises(Exception, match=r"1,000,000 characters long; the limit is 10,000"):
        client.predict("a" * 1_000_000, 10, api_name="/generate")
    assert time.perf_counter() - start < 10  # refused before any work: 0.2 s here
    assert_healthy(client)


def test_a_prompt_of_exactly_the_limit_is_accepted(client, tokenizer):
    prompt = ("To be, or not to be: that is the question.\n" * 300)[:MAX_PROMPT_CHARS]
    text = client.predict(prompt, 10, 0.8, 0, 1.0, 2, api_name="/generate")
    assert_well_formed(text, prompt, 10, tokenizer.vocab)
    with pytest.raises(Exception, match=r"10,001 characters long; the limit is 10,000"):
        client.predict(prompt + "a", 10, api_name="/generate")


def test_a_file_shaped_prompt_is_refused_and_nothing_is_read(server, client):
    # Gradio treats {"path": ..., "meta": {"_type": "gradio.FileData"}} as a file to copy in; it must
    # refuse files that were not uploaded, and never answer with their contents. Gradio's own refusal
    # carries no message (its choice, not ours), so only "an error, not a result" is asserted.
    for path in ["/etc/passwd", "http://127.0.0.1:1/secret"]:
        outcome, _ = call_raw(server, [{"path": path, "meta": {"_type": "gradio.FileData"}}, 5, 0.8, 0, 1.0, 3])
        assert outcome == "error"
    assert_healthy(client)


# --- Edge cases this suite found (each once gave the client an error with no message) -----------------


@pytest.mark.parametrize("seed", [math.nan, math.inf, -math.inf])
def test_a_nan_or_infinite_seed_is_a_clear_error(server, client, seed):
    outcome, value = call_raw(server, ["ROMEO:", 5, 0.8, 0, 1.0, seed])
    assert_healthy(client)
    assert outcome == "error"
    assert_clear(value)


@pytest.mark.parametrize("position", [1, 2, 3, 4])
def test_numbers_beyond_float_range_are_a_clear_error(client, position):
    args = ["ROMEO:", 5, 0.8, 0, 1.0, 3]
    args[position] = 10**400  # valid JSON; gradio_client sends it as is
    outcome, value = call(client, *args)
    assert_healthy(client)
    assert outcome == "error"
    assert_clear(value)


@pytest.mark.parametrize(("temperature", "top_p"), [(5e-324, 1.0), (1e-300, 1.0), (0.8, 5e-324), (0.8, 1e-46)])
def test_a_tiny_temperature_or_top_p_still_samples(client, temperature, top_p):
    outcome, value = call(client, "ROMEO:", 5, temperature, 0, top_p, 3)
    assert_healthy(client)
    assert outcome == "ok", value

"""An OpenAI-style HTTP API beside the page: `POST /v1/completions`, `GET /v1/models`, `GET /health`.

Programs talk to language model servers (llama.cpp's, vLLM, TGI, Ollama) in the shape of OpenAI's
completions API: a JSON request, and with `"stream": true` server-sent events that each carry only
the new text, ending in `data: [DONE]`. These routes answer it from the page's own engine, so an API
request's rows join the batch beside the page's visitors, and on the page's own web server and port:
`routes(...)` goes into `demo.launch(app_kwargs={"routes": ...})` (FastAPI's `routes` argument), which
puts them ahead of Gradio's own, also on a Space, where the Space runs app.py and app.py launches.

The request's checks are the page's (`tinygpt.generate`), each answered as 400 naming its field in
OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`; unknown fields are ignored.
Waiting requests are bounded like the page's queue: a request whose rows would make more than
`queue_size` generations wait for a row is answered 429 at once. A client that goes away frees its rows at
the engine's next step. Characters are the model's tokens, so usage counts characters; docs/http_api.md
shows it used with curl and with the `openai` package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from tinygpt.files.checkpoint import WEIGHTS_DIR
from tinygpt.model.tokenizer import CharTokenizer
from tinygpt.serving.engine import Engine, Request
from tinygpt.serving.generate import InputError, Sequence, check_settings, clean_prompt, start

MAX_BODY_BYTES = 128 * 1024  # a prompt at the page's limit, every character JSON-escaped, fits in half
MAX_STOPS = 4  # as OpenAI's API
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default
OWNER = "tinygpt"


class ApiError(Exception):
    """A request answered with an error status and OpenAI's error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


@dataclass
class Completion:
    """A checked completions request: the cleaned prompt, one Sequence per choice, and how to answer."""

    prompt: str
    sequences: list[Sequence]
    stops: list[str]
    stream: bool
    include_usage: bool


def model_name(name: str) -> str:
    """The model's id in the API: tiny_gpt for the shipped weights, else the folder's name or OWNER/NAME."""
    path = Path(name)
    if path.is_dir():
        return "tiny_gpt" if path.resolve() == WEIGHTS_DIR.resolve() else path.resolve().name
    return name


def _checked(param: str, check: Callable, *args: object) -> object:
    try:
        return check(*args)
    except InputError as err:
        raise ApiError(400, f"{param}: {err}", param=param) from None  # the page's words, and the field's name


def parse_completion(body: object, tokenizer: CharTokenizer) -> Completion:
    """A completions request's JSON checked with the page's own checks (ApiError names the field)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(body).__name__}")

    def field(name: str, default: object) -> object:
        value = body.get(name)
        return default if value is None else value  # null: the default, as in OpenAI's API

    prompt = field("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1:  # a batch of one prompt, as clients may send it
        prompt = prompt[0]
    max_tokens = field("max_tokens", DEFAULT_MAX_TOKENS)
    temperature = field("temperature", DEFAULT_TEMPERATURE)
    top_k = field("top_k", 0)  # the page's "all characters"; vLLM's -1 means the same
    top_k = 0 if top_k == -1 and not isinstance(top_k, bool) else top_k
    top_p = field("top_p", 1.0)
    n = field("n", 1)
    seed = body.get("seed")
    _checked("prompt", clean_prompt, tokenizer, prompt)
    _checked("max_tokens", check_settings, max_tokens, 0.0)
    _checked("temperature", check_settings, 1, temperature)
    _checked("top_k", check_settings, 1, 0.0, top_k)
    _checked("top_p", check_settings, 1, 0.0, None, top_p)
    _checked("n", check_settings, 1, 0.0, None, None, n)
    # Every other field has passed its check: what `start` can still refuse is the seed.
    text, sequences = _checked("seed", start, tokenizer, prompt, max_tokens, temperature, seed, top_k, top_p, n)

    stream = field("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, not {stream!r}", param="stream")
    stops = field("stop", [])
    stops = [stops] if isinstance(stops, str) else stops
    if not (isinstance(stops, list) and len(stops) <= MAX_STOPS and all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOPS} non-empty strings", param="stop")
    options = field("stream_options", {})
    include_usage = options.get("include_usage") if isinstance(options, dict) else None
    if not isinstance(options, dict) or not isinstance(include_usage, (bool, type(None))):
        raise ApiError(400, 'stream_options must be an object such as {"include_usage": true}', param="stream_options")
    return Completion(text, sequences, stops, stream, bool(include_usage))


async def read_json(request: HttpRequest) -> object:
    """The request's body as JSON, at most MAX_BODY_BYTES (413 beyond: read no further)."""
    too_big = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES:,} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_big
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, nested too deep, a number too long
        raise ApiError(400, f"the body is not valid JSON ({type(err).__name__})") from None


class ChoiceText:
    """One choice's text as it is generated: what may be sent, holding back what could start a stop string."""

    def __init__(self, stops: list[str], max_tokens: int) -> None:
        self.stops, self.max_tokens = stops, max_tokens
        self.longest = max(map(len, stops), default=0)
        self.generated = ""  # every character the model gave this choice
        self.sent = 0  # how many of them have been let out
        self.finish_reason: str | None = None

    def add(self, chars: str) -> str:
        """Take new characters; returns the text that can be sent now (and sets finish_reason at the end)."""
        searched = max(len(self.generated) - self.longest + 1, self.sent)
        self.generated += chars
        hits = [i for i in (self.generated.find(stop, searched) for stop in self.stops) if i >= 0]
        if hits:
            end, self.finish_reason = min(hits), "stop"
        elif len(self.generated) >= self.max_tokens:
            end, self.finish_reason = len(self.generated), "length"
        else:
            end = len(self.generated) - self._held_back()
        new, self.sent = self.generated[self.sent : end], end
        return new

    def _held_back(self) -> int:
        """The length of the longest end of the unsent text that begins a stop string."""
        unsent = self.generated[self.sent :]
        for size in range(min(len(unsent), self.longest - 1), 0, -1):
            if any(stop.startswith(unsent[-size:]) for stop in self.stops):
                return size
        return 0

    @property
    def text(self) -> str:
        return self.generated[: self.sent]


class CompletionRun:
    """A completions request's choices decoding in the engine, read as updates of new text."""

    def __init__(self, completion: Completion, requests: list[Request], vocab: str, pace: Callable[[], float]):
        self.completion, self.requests, self.vocab, self.pace = completion, requests, vocab, pace
        self.choices = [ChoiceText(completion.stops, s.max_new_tokens) for s in completion.sequences]

    def cancel(self) -> None:
        """Let the engine drop every row still running (at its next step); harmless for finished ones."""
        for request in self.requests:
            request.cancelled = True

    def usage(self) -> dict:
        prompt, generated = len(self.completion.prompt), sum(len(c.generated) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    async def updates(self) -> AsyncIterator[list[tuple[int, str, str | None]]]:
        """(choice, new text, finish reason or None) for each choice that moved, an engine update at a time.
        A choice that meets a stop string leaves the engine at once."""
        streams = [request.updates(self.pace) for request in self.requests]
        pending: dict[asyncio.Future, int] = {}
        try:
            pending = {asyncio.ensure_future(anext(stream)): i for i, stream in enumerate(streams)}
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                moved = []
                for future in sorted(done, key=pending.__getitem__):
                    i = pending.pop(future)
                    with contextlib.suppress(StopAsyncIteration):
                        tokens = future.result()  # raises the engine's error, if it failed
                        choice = self.choices[i]
                        new = choice.add("".join(self.vocab[token.token] for token in tokens))
                        if new or choice.finish_reason:
                            moved.append((i, new, choice.finish_reason))
                        if choice.finish_reason is None:
                            pending[asyncio.ensure_future(anext(streams[i]))] = i
                        else:
                            await streams[i].aclose()  # after a stop: frees the row now
                if moved:
                    yield moved
        finally:
            # The rows first, with no await before: in a cancelled task each await can be cancelled again.
            self.cancel()
            for future in pending:
                future.cancel()  # its stream ends with the cancellation
            for i, stream in enumerate(streams):
                if i not in pending.values():
                    await stream.aclose()  # runs to its end at once: nothing in it waits


class EventStream(StreamingResponse):
    """Server-sent events whose rows leave the engine however the response ends: done, failed, or
    the client gone (also before the first event, when the body's generator never started)."""

    def __init__(self, content: AsyncIterator[str], run: CompletionRun) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds events back
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(RuntimeError):  # its generator is still running where the task was cancelled
                await self.body_iterator.aclose()
            self.run.cancel()


def _event(data: object) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _disconnected(request: HttpRequest) -> None:
    """Returns when the client has gone (the body has been read, so only that message is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def routes(engine: Engine, model: str, queue_size: int, interval_s: float = 0.05) -> list[BaseRoute]:
    """The API's routes, serving `model` from `engine`: at most `queue_size` generations wait for a row
    (429 beyond), and a stream sends its new text at most every `interval_s` seconds (the engine
    stretches that on a crowded batch, as for the page)."""
    tokenizer = CharTokenizer(engine.decoder.config.vocab)
    created = int(time.time())
    router = APIRouter()

    def pace() -> float:
        return engine.pace(interval_s)

    async def health() -> dict:
        return {
            "status": "ok",
            "backend": engine.backend.name,
            "running": engine.running,
            "waiting": engine.waiting,
            "max_batch": engine.max_batch,
        }

    async def models() -> dict:
        card = {"id": model, "object": "model", "created": created, "owned_by": OWNER}
        return {"object": "list", "data": [card | {"max_model_len": engine.decoder.config.block_size}]}

    async def completions(request: HttpRequest) -> Response:
        try:
            body = await read_json(request)
        except ClientDisconnect:
            return Response(status_code=499)
        except ApiError as err:
            return err.response()
        try:
            completion = parse_completion(body, tokenizer)
            if engine.running + engine.waiting + len(completion.sequences) > engine.max_batch + queue_size:
                raise ApiError(429, f"the server is busy: {engine.waiting} generations wait for a place; try again "
                               "shortly", kind="rate_limit_error")  # fmt: skip
        except ApiError as err:
            return err.response()
        run = CompletionRun(completion, [engine.submit(s) for s in completion.sequences], tokenizer.vocab, pace)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = model
        if completion.stream:
            return EventStream(_stream(run, head), run)
        return await _answer(run, head, request)

    router.add_api_route("/health", health, methods=["GET"])
    router.add_api_route("/v1/models", models, methods=["GET"])
    router.add_api_route("/v1/completions", completions, methods=["POST"])
    return router.routes


async def _stream(run: CompletionRun, head: dict) -> AsyncIterator[str]:
    """The events of a streamed completion: each choice's new text as it comes, then [DONE]."""
    extra = {"usage": None} if run.completion.include_usage else {}
    try:
        async for moved in run.updates():
            for index, text, reason in moved:
                choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
                yield _event(head | {"choices": [choice]} | extra)
    except Exception as err:  # the engine failed: tell the client in the stream, log the details here
        traceback.print_exc(file=sys.stderr)
        yield _event(ApiError(500, f"the generation failed ({type(err).__name__})", "server_error").body())
        return
    if run.completion.include_usage:
        yield _event(head | {"choices": [], "usage": run.usage()})
    yield "data: [DONE]\n\n"


async def _answer(run: CompletionRun, head: dict, request: HttpRequest) -> Response:
    """A completion in one JSON answer, once every choice is done; the rows leave if the client goes."""

    async def collect() -> None:
        async for _ in run.updates():
            pass

    finished, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({finished, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (finished, gone):
            task.cancel()
        await asyncio.gather(finished, gone, return_exceptions=True)
        run.cancel()
    if not finished.done() or finished.cancelled():
        return Response(status_code=499)  # nobody is listening
    if finished.exception() is not None:
        print("tinygpt http_api: a generation failed", file=sys.stderr)
        err = finished.exception()
        return ApiError(500, f"the generation failed ({type(err).__name__})", "server_error").response()
    choices = [
        {"index": i, "text": choice.text, "logprobs": None, "finish_reason": choice.finish_reason}
        for i, choice in enumerate(run.choices)
    ]
    return JSONResponse(head | {"choices": choices, "usage": run.usage()})

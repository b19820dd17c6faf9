"""Continuous batching: many generations share one decode loop, as in vLLM, TGI or llama.cpp's slots.

One background thread owns the model's Decoder (`tinygpt.serving.generate`) and loops: let waiting requests
join (each is prefilled into a free cache row), then one step, which gives every active sequence
its next character in one batched forward pass, then hand each character to its request. A
finished or cancelled request leaves at the next step boundary and frees its row (a client that
goes away: Gradio sees its connection close, stops its event at the next update, at most
`pace(interval)` later, and closes the stream, which cancels the request); beyond
`max_batch` requests wait their turn. At batch 1 a step reads every weight to make one character;
the same reads serve all the sequences of a batch, so the machine's throughput grows with the batch
while each person's pace slows only a little. On a crowded engine each stream takes its new
characters less often (`pace`), so the web server's per-update work leaves the loop its CPU.

Each sequence keeps its own sampling settings and random generator, so a seed gives the same text
as when it runs alone (the C++ step computes every row the same way at any batch size; PyTorch's
batched matmuls may round differently, which can flip a near-tie). The backend can be swapped while
serving (`use`), e.g. to the C++ step once it has been compiled.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable

import torch

from tinygpt.serving.backends import Backend
from tinygpt.serving.generate import Decoder, Sequence, Token

DEFAULT_MAX_BATCH = 32  # generations decoded together by default: the load benchmark's 32 clients (docs/crowd.md)
# Each stream's updates slow down in proportion once more than this many generations run: on a
# crowded page the server's per-update work would otherwise take the CPU the decode loop needs.
STREAM_CROWD = 8


class Request:
    """One generation in the engine. The engine's thread appends its tokens; the caller reads them
    with `updates`, on its asyncio event loop (the web server's), so a waiting reader holds no thread."""

    def __init__(self, sequence: Sequence) -> None:
        self.sequence = sequence
        self.cancelled = False  # set by the reader: the engine drops the sequence at the next step
        self.finished = False
        self.error: BaseException | None = None
        self._tokens: collections.deque[Token] = collections.deque()
        # A reader waiting: its loop, the future that wakes it, and whether new tokens should (or the end only).
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future, bool] | None = None

    def put(self, token: Token) -> None:
        self._tokens.append(token)
        self._wake(by_tokens=True)

    def end(self, error: BaseException | None = None) -> None:
        self.error, self.finished = error, True
        self._wake(by_tokens=False)

    def _wake(self, by_tokens: bool) -> None:
        """Wake the reader from the engine's thread, if it waits for this."""
        waiter = self._waiter
        if waiter is None or (by_tokens and not waiter[2]):
            return
        self._waiter = None
        loop, future, _ = waiter
        with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is listening
            loop.call_soon_threadsafe(_settle, future)

    async def updates(self, interval: Callable[[], float] = lambda: 0.0) -> AsyncIterator[list[Token]]:
        """The new tokens as they come, a list at a time, at most every `interval()` seconds (the first
        and the last at once). Closing this iterator (or cancelling its task) cancels the request."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                finished = self.finished  # read before draining: tokens put before `end` are then all drained
                new = [self._tokens.popleft() for _ in range(len(self._tokens))]
                if new:
                    yield new
                if finished:
                    if self.error is not None:
                        raise self.error
                    return
                # After an update, pause (only the end cuts it short, so the client hears at once);
                # otherwise wait for the next tokens or the end.
                pause = interval() if new else 0.0
                woken = loop.create_future()
                self._waiter = (loop, woken, not pause)
                if self.finished or (not pause and self._tokens):  # it came before the waiter was set
                    self._waiter = None
                    continue
                timer = loop.call_later(pause, _settle, woken) if pause else None
                try:
                    await woken
                finally:
                    if timer is not None:
                        timer.cancel()
        finally:
            self._waiter = None
            self.cancelled = True


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Engine:
    """A decode loop on a background thread that every request shares; see the module doc."""

    def __init__(self, backend: Backend, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.decoder = Decoder(backend, max_batch)
        self.max_batch = max_batch
        self._waiting: collections.deque[Request] = collections.deque()
        self._active: dict[Sequence, Request] = {}
        self._next_backend: Backend | None = None
        # The most sequences one step has decoded together: how much of the batch the page really uses.
        self.most_running = 0
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tinygpt-engine", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # stop between steps, not inside one, when the interpreter exits

    @property
    def backend(self) -> Backend:
        return self._next_backend or self.decoder.backend

    @property
    def running(self) -> int:
        """Generations in the batch now."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Generations waiting for a row."""
        return len(self._waiting)

    def use(self, backend: Backend) -> None:
        """Decode with `backend` from the next step on."""
        with self._wake:
            self._next_backend = backend
            self._wake.notify()

    def submit(self, sequence: Sequence) -> Request:
        """Queue a sequence; it joins the batch at the next step with a free row."""
        request = Request(sequence)
        with self._wake:
            self._waiting.append(request)
            self._wake.notify()
        return request

    def generate(self, sequence: Sequence, interval: float = 0.0) -> AsyncIterator[list[Token]]:
        """The new tokens as they come (read on an asyncio event loop), at most every `interval` seconds
        while up to STREAM_CROWD generations run, proportionally less often beyond; closing the
        iterator cancels."""
        return self.submit(sequence).updates(lambda: self.pace(interval))

    def pace(self, interval: float) -> float:
        """`interval`, stretched in proportion to the generations running beyond STREAM_CROWD."""
        return interval * max(1.0, len(self._active) / STREAM_CROWD)

    def held(self) -> dict[str, int]:
        """What the engine holds now: cache rows in use, requests waiting for one; and `most_running`."""
        return {"rows": len(self.decoder.sequences), "waiting": len(self._waiting), "most_running": self.most_running}

    def close(self) -> None:
        """Stop the loop after the current step; requests still running end with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not (self._waiting or self._active or self._next_backend is not None or self._closed):
                    self._wake.wait()
                if self._closed:
                    for request in [*self._waiting, *self._active.values()]:
                        request.end(RuntimeError("the engine was closed"))
                    return
                if self._next_backend is not None:
                    self.decoder.use(self._next_backend)
                    self._next_backend = None
                joining = []
                while self._waiting and len(self._active) + len(joining) < self.max_batch:
                    joining.append(self._waiting.popleft())
            try:
                self._step(joining)
            except Exception as err:  # a bug or out of memory: fail these requests, keep serving others
                print(f"tinygpt engine: a step failed ({type(err).__name__}: {err})", file=sys.stderr)
                for request in [*joining, *self._active.values()]:
                    request.end(err)
                    if request.sequence in self.decoder.sequences:
                        self.decoder.remove(request.sequence)
                self._active.clear()

    def _step(self, joining: list[Request]) -> None:
        for request in [r for r in self._active.values() if r.cancelled]:
            self.decoder.remove(request.sequence)
            del self._active[request.sequence]
        for request in joining:
            if not request.cancelled:
                self.decoder.add(request.sequence)
                self._active[request.sequence] = request
        self.most_running = max(self.most_running, len(self._active))
        for token in self.decoder.step():
            request = self._active[token.sequence]
            request.put(token)
            if token.sequence.done:
                request.end()
                del self._active[token.sequence]

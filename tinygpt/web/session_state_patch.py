"""Gradio sessions that start without their own copy of every component's configuration.

Gradio keeps a session for each browser tab and for each API call that sends no session hash
(curl, a plain HTTP client): up to 10,000 of them. Each one starts with its own configuration of
every component on the page (74 here), built by asking each component for its properties and API
schema: ~5 ms of server CPU and ~50 KB kept per session, ~500 MB once a busy page holds 10,000.
Gradio reads those configurations for one thing only, its deep-link route (a session's current
values, for a `gr.DeepLinkButton`, which this page does not have), and when an event writes a
value into a session that has no configuration for that component, Gradio builds it then. So the
sessions of a page passed to `start_sessions_lean(demo)` start with none: an API call's session
keeps ~3 KB, and a browser tab's the configurations of the components its events have written.

Written against gradio 6.31.0's `state_holder.SessionState`, whose `config_values` only its own
methods use; the tests check that after an event's write a session holds the configuration Gradio's
own session would. On any other Gradio version it does not install: sessions are Gradio's own (the
page works the same, with more memory per session), and one line says so.
"""

from __future__ import annotations

import sys
import weakref

import gradio as gr
from gradio import state_holder

WRITTEN_FOR = "6.31.0"  # the Gradio whose SessionState constructor this was checked against
_lean_pages: weakref.WeakSet[gr.Blocks] = weakref.WeakSet()
_gradio_init = state_holder.SessionState.__init__


class _WithoutComponents:
    """A page seen by SessionState's constructor as having no components: it sets up everything
    else of the session, with no component configurations."""

    def __init__(self, blocks: gr.Blocks) -> None:
        self.default_config = blocks.default_config
        self.blocks: dict = {}


def _init_session(session: state_holder.SessionState, blocks: gr.Blocks) -> None:
    _gradio_init(session, _WithoutComponents(blocks) if blocks in _lean_pages else blocks)


def start_sessions_lean(demo: gr.Blocks, gradio_version: str = gr.__version__) -> bool:
    """New sessions of `demo` start without component configurations (other pages: as Gradio builds
    them). Returns whether it did: not on a Gradio other than WRITTEN_FOR."""
    if gradio_version != WRITTEN_FOR:
        print(f"gradio {gradio_version}, not {WRITTEN_FOR}: sessions are built by Gradio itself "
              "(tinygpt.web.session_state_patch is checked on that version only)", file=sys.stderr)  # fmt: skip
        return False
    _lean_pages.add(demo)
    state_holder.SessionState.__init__ = _init_session  # the same function each time: installed once
    return True

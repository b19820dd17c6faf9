"""Gradio sessions started from a copy of one ready-made page configuration, not built from scratch.

Gradio keeps, for each session, its own copy of every component's configuration (74 components on
this page), and builds it when the session starts by asking each component for its properties
and API schema. A browser tab starts one session, but an API call that sends no session hash (curl,
or a plain HTTP client) is a session of its own: on a crowded page that construction, ~5 ms of
server CPU per call, was a third of the CPU each call cost, and every stored session kept ~2,000
objects for Python's garbage collector to walk. A session's starting configuration is the same for
every session of a page, so `start_sessions_from_template(demo)` has Gradio build it once, for the
page's first session, and gives each later one a copy: the outer dict and, per component, its dict
and its "props" (the only level Gradio writes into, when an event updates a value).

Written against gradio's `state_holder.SessionState` (its `config_values` and `blocks`); the tests
check that a session started from the template has the configuration Gradio builds itself.
"""

from __future__ import annotations

import weakref

import gradio as gr
from gradio import state_holder

_templates: weakref.WeakKeyDictionary[gr.Blocks, dict | None] = weakref.WeakKeyDictionary()  # None: not built yet
_gradio_init = state_holder.SessionState.__init__


def copy_config(config_values: dict) -> dict:
    """A copy of a session's component configurations down to each one's props."""
    copied = {}
    for key, config in config_values.items():
        config = dict(config)
        if "props" in config:
            config["props"] = dict(config["props"])
        copied[key] = config
    return copied


class _WithoutComponents:
    """A page seen by SessionState's constructor as having no components: it sets up everything
    else of the session, and the component configurations come from the template."""

    def __init__(self, blocks: gr.Blocks) -> None:
        self.default_config = blocks.default_config
        self.blocks: dict = {}


def _init_session(session: state_holder.SessionState, blocks: gr.Blocks) -> None:
    if blocks not in _templates:  # a page without a template: Gradio's own construction
        _gradio_init(session, blocks)
    elif _templates[blocks] is None:  # the page's first session: Gradio builds it, a copy is the template
        _gradio_init(session, blocks)
        _templates[blocks] = copy_config(session.config_values)
    else:
        _gradio_init(session, _WithoutComponents(blocks))
        session.config_values = copy_config(_templates[blocks])


def start_sessions_from_template(demo: gr.Blocks) -> None:
    """New sessions of `demo` start from a copy of its first session's configuration. Call it once
    the page is complete (components added later would be missing from the template)."""
    _templates[demo] = None
    state_holder.SessionState.__init__ = _init_session

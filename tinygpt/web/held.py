"""What the page holds right now, for load tests and operators: the engine's rows and the trained models.

`add_held_api(engine, models)` (inside a `gr.Blocks`) registers /held, a private endpoint (not in the
API page, nor offered by gradio_client; a plain HTTP call reaches it, as it reaches every event of a
Gradio page) that answers counts and nothing else: no text, prompt, session or file name. It has a concurrency group
of its own, without a limit, so it answers at once on a page that is busy.

    POST /gradio_api/call/held {"data": []}, then GET /gradio_api/call/held/EVENT_ID
    -> {"rows": 0, "waiting": 0, "most_running": 32, "trained_models": 0, "trainings": 0}
"""

from __future__ import annotations

import gradio as gr

from tinygpt.serving.engine import Engine
from tinygpt.training.playground import VisitorModels


def held(engine: Engine, models: VisitorModels | None) -> dict[str, int]:
    """The engine's cache rows in use, requests waiting for one and the most it ran at once; the
    trained models kept for sessions and the trainings running (0 without a Train tab)."""
    counts = engine.held()
    counts["trained_models"] = len(models.models) if models else 0
    counts["trainings"] = len(models.jobs) if models else 0
    return counts


def add_held_api(engine: Engine, models: VisitorModels | None) -> None:
    def held_now() -> dict[str, int]:
        return held(engine, models)

    gr.api(held_now, api_name="held", api_visibility="private", concurrency_limit=None)

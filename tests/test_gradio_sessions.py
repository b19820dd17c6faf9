"""Sessions of the page start from a copy of one configuration (tinygpt.gradio_sessions): the same
configuration Gradio builds itself, each session's own, and built once, not per API call."""

import gradio as gr
import pytest
from gradio import state_holder
from gradio.blocks import BlocksConfig

from app import build_demo
from tinygpt import gradio_sessions
from tinygpt.backends import TorchBackend
from tinygpt.engine import Engine
from tinygpt.train_tab import TrainSettings


@pytest.fixture
def demo(tiny_model):
    engine = Engine(TorchBackend(tiny_model), max_batch=2)
    yield build_demo(engine, training=TrainSettings())  # the whole page, Train tab included
    engine.close()


def gradio_built(demo) -> state_holder.SessionState:
    session = state_holder.SessionState.__new__(state_holder.SessionState)
    gradio_sessions._gradio_init(session, demo)
    return session


def test_a_new_session_has_the_configuration_gradio_builds(demo):
    first, later = state_holder.SessionState(demo), state_holder.SessionState(demo)
    expected = gradio_built(demo)
    assert len(expected.config_values) > 50
    assert first.config_values == later.config_values == expected.config_values
    assert later.blocks_config.blocks == expected.blocks_config.blocks
    assert later.blocks_config is not demo.default_config and later.state_data == {} and not later.is_closed


def test_later_sessions_do_not_ask_the_components_again(demo, monkeypatch):
    state_holder.SessionState(demo)  # the first builds the template
    calls = []
    original = BlocksConfig.config_for_block
    counted = staticmethod(lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(BlocksConfig, "config_for_block", counted)
    state_holder.SessionState(demo)
    assert calls == []
    with gr.Blocks() as other_page:  # a page not given a template: Gradio builds its sessions itself
        gr.Textbox()
    calls.clear()
    state_holder.SessionState(other_page)
    first = len(calls)
    state_holder.SessionState(other_page)
    assert first > 0 and len(calls) == 2 * first


def test_a_value_written_into_one_session_stays_in_that_session(demo):
    one, two = state_holder.SessionState(demo), state_holder.SessionState(demo)
    textbox = next(key for key, config in one.config_values.items() if config.get("type") == "textbox")
    before = two.config_values[textbox]["props"].get("value")
    one._update_value_in_config(textbox, "only in session one")  # what Gradio does with an event's output
    assert one.config_values[textbox]["props"]["value"] == "only in session one"
    assert two.config_values[textbox]["props"].get("value") == before
    assert state_holder.SessionState(demo).config_values[textbox]["props"].get("value") == before

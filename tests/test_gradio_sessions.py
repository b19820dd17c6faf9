"""Sessions of the page start without component configurations (tinygpt.gradio_sessions): none is
built per session, and after an event writes a value the session holds what Gradio's own would."""

import gradio as gr
import pytest
from gradio import state_holder
from gradio.blocks import BlocksConfig

from tinygpt.serving.backends import TorchBackend
from tinygpt.serving.engine import Engine
from tinygpt.web import session_state_patch as gradio_sessions
from tinygpt.web.page import build_demo
from tinygpt.web.train_tab import TrainSettings


@pytest.fixture
def demo(tiny_model):
    engine = Engine(TorchBackend(tiny_model), max_batch=2)
    yield build_demo(engine, training=TrainSettings())  # the whole page, Train tab included
    engine.close()


def gradio_built(demo) -> state_holder.SessionState:
    session = state_holder.SessionState.__new__(state_holder.SessionState)
    gradio_sessions._gradio_init(session, demo)
    return session


def a_textbox(session: state_holder.SessionState) -> int:
    return next(key for key, config in session.config_values.items() if config.get("type") == "textbox")


def test_a_new_session_asks_no_component_for_its_configuration(demo, monkeypatch):
    calls = []
    original = BlocksConfig.config_for_block
    monkeypatch.setattr(BlocksConfig, "config_for_block", staticmethod(lambda *a: calls.append(1) or original(*a)))
    session = state_holder.SessionState(demo)
    assert calls == [] and session.config_values == {}
    expected = gradio_built(demo)
    assert len(calls) > 50  # what each session cost before
    assert session.blocks_config.blocks == expected.blocks_config.blocks
    assert session.blocks_config is not demo.default_config and session.state_data == {} and not session.is_closed


def test_other_pages_keep_the_sessions_gradio_builds(demo):  # `demo` has installed the lean sessions
    with gr.Blocks() as other_page:
        gr.Textbox()
    session = state_holder.SessionState(other_page)
    assert session.config_values and session.config_values == gradio_built(other_page).config_values


def test_a_written_value_leaves_the_configuration_gradio_would_hold(demo):
    lean, full = state_holder.SessionState(demo), gradio_built(demo)
    textbox = a_textbox(full)
    for session in (lean, full):
        session._update_value_in_config(textbox, "written")  # what Gradio does with an event's output
    assert lean.config_values[textbox] == full.config_values[textbox]
    assert lean.config_values[textbox]["props"]["value"] == "written"
    assert list(lean.components) == [full.config_values[textbox]]  # what Gradio's deep-link route would save


def test_a_value_written_into_one_session_stays_in_that_session(demo):
    one, two = state_holder.SessionState(demo), state_holder.SessionState(demo)
    textbox = a_textbox(gradio_built(demo))
    default = gradio_built(demo).config_values[textbox]["props"].get("value")
    one._update_value_in_config(textbox, "only in session one")
    assert one.config_values[textbox]["props"]["value"] == "only in session one"
    assert two.config_values == {}
    two._update_value_in_config(textbox, "in session two")
    assert one.config_values[textbox]["props"]["value"] == "only in session one"
    assert gradio_built(demo).config_values[textbox]["props"].get("value") == default  # the page itself untouched


def test_on_another_gradio_the_page_keeps_gradios_sessions_and_says_so_once(capsys):
    with gr.Blocks() as page:
        gr.Textbox()
    assert not gradio_sessions.start_sessions_lean(page, gradio_version="6.32.0")
    assert state_holder.SessionState(page).config_values == gradio_built(page).config_values
    assert capsys.readouterr().err.count("\n") == 1
    assert gradio_sessions.start_sessions_lean(page, gradio_version=gradio_sessions.WRITTEN_FOR)
    assert state_holder.SessionState(page).config_values == {}

"""The Gradio app: its generate function in process, then the real server end to end."""

import gradio as gr
import pytest
from gradio_client import Client

from app import build_demo, make_generate
from tinygpt.checkpoint import load_model


def test_generate_streams_the_growing_text_and_ends_with_prompt_plus_n(tiny_model):
    generate = make_generate(tiny_model)
    updates = list(generate("ROMEO:", 400, 0.8, 1))
    assert updates[-1].startswith("ROMEO:") and len(updates[-1]) == len("ROMEO:") + 400
    assert all(updates[-1].startswith(u) for u in updates)  # each update extends the previous text
    assert list(generate("ROMEO:", 400, 0.8, 1))[-1] == updates[-1]


def test_generate_accepts_the_float_a_slider_sends(tiny_model):
    assert len(list(make_generate(tiny_model)("", 12.0, 0.0))[-1]) == 12


@pytest.mark.parametrize(
    ("prompt", "n", "temperature", "seed", "message"),
    [
        ("price: 5 pounds", 10, 0.8, None, "'5'"),
        ("hi", 0, 0.8, None, "from 1 to"),
        ("hi", 10, 3.0, None, "between 0"),
        ("hi", 10, 0.8, 1.5, "seed must be a whole number"),
    ],
)
def test_generate_turns_bad_input_into_a_gradio_error(tiny_model, prompt, n, temperature, seed, message):
    with pytest.raises(gr.Error) as err:
        list(make_generate(tiny_model)(prompt, n, temperature, seed))
    assert message in str(err.value)


def test_build_demo_registers_the_generate_api(tiny_model):
    demo = build_demo(tiny_model)
    api_names = [dep.api_name for dep in demo.fns.values()]
    assert "generate" in api_names


@pytest.mark.slow
def test_end_to_end_generate_over_http(server, tiny_weights):
    client = Client(server, verbose=False)
    text = client.predict("ROMEO:", 50, 0.8, 7, api_name="/generate")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 50
    assert client.predict(prompt="ROMEO:", max_new_tokens=50, temperature=0.8, seed=7, api_name="/generate") == text
    # The server's answer is the library's answer for the same seed.
    expected = list(make_generate(load_model(tiny_weights))("ROMEO:", 50, 0.8, 7))[-1]
    assert text == expected


@pytest.mark.slow
def test_end_to_end_bad_input_is_a_clear_error(server):
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match=r"unsupported character\(s\): '\\U0001f600'|unsupported character"):
        client.predict("hello \U0001f600", 10, 0.8, None, api_name="/generate")

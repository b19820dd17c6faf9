"""Deploying: models on the Hugging Face Hub (tinygpt.hub.models: TinyGPT, push), the page as a
Space (tinygpt.hub.space) and its training on ZeroGPU (tinygpt.hub.zerogpu). `python -m tinygpt.hub`."""

from tinygpt.hub.models import TinyGPT, push

__all__ = ["TinyGPT", "push"]

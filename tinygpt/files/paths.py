"""Where the repository keeps the text the code trains on and evaluates by default."""

from __future__ import annotations

from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "tinyshakespeare.txt"

"""Characters <-> integers (seed steps 2 and 3), plus the cleaning of text typed by people."""

from __future__ import annotations

import unicodedata

# Close equivalents for characters people type that a corpus often lacks. Each is applied only
# when the character itself is missing from the vocabulary, so a corpus that has them keeps them.
SUBSTITUTES = {
    "\r\n": "\n",
    "\r": "\n",
    "\t": " ",
    "\u00a0": " ",  # no-break space
    "\u2018": "'",  # curly single quotes
    "\u2019": "'",
    "\u201c": '"',  # curly double quotes
    "\u201d": '"',
    '"': "'",
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u2026": "...",  # ellipsis
}


class UnknownCharactersError(ValueError):
    """The text holds characters the model has never seen and that have no close equivalent."""

    def __init__(self, chars: list[str]) -> None:
        self.chars = chars
        shown = ", ".join(repr(c) for c in chars)
        super().__init__(f"unsupported character(s): {shown}. The model only knows its training alphabet.")


class CharTokenizer:
    """A vocabulary of single characters; a character's id is its index in `vocab`."""

    def __init__(self, vocab: str) -> None:
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has repeated characters")
        self.vocab = vocab
        self.stoi = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The sorted distinct characters of a corpus."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise UnknownCharactersError(unknown)
        return [self.stoi[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def normalize(self, text: str) -> str:
        """Map typed text into the vocabulary, or raise UnknownCharactersError naming what can't be."""
        for src, dst in SUBSTITUTES.items():
            if src not in self.stoi and src in text:
                text = text.replace(src, dst)
        text = "".join(self._closest(ch) for ch in text)
        self.encode(text)  # raises, naming every character still unknown
        return text

    def _closest(self, ch: str) -> str:
        if ch in self.stoi:
            return ch
        # Accented letters: "é" decomposes to "e" + a combining accent; keep the base letter.
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        if base and all(c in self.stoi for c in base):
            return base
        return ch

"""Prompt tokenisation: cleaning as openpi does, a deterministic tokenizer, and padding with a mask.

The shipped tokenizer is byte-level (UTF-8 bytes shifted past two special ids), so it needs no
vocabulary file and gives the same ids everywhere. A real checkpoint's SentencePiece model plugs in
through `SentencePieceTokenizer`; select it with the preprocess parameter
`"tokenizer": "sentencepiece:<path relative to the model directory>"`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

PAD_ID = 0
BOS_ID = 1


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 2..257, with 0 = pad and 1 = begin-of-sequence."""

    vocab_size = 258
    _offset = 2

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [byte + self._offset for byte in text.encode("utf-8")]
        return [BOS_ID, *ids] if add_bos else ids


class SentencePieceTokenizer:
    """Adapter for a SentencePiece model file (for example PaliGemma's, as pi0 uses)."""

    def __init__(self, model_path: str | Path) -> None:
        import sentencepiece  # optional dependency: only needed for this tokenizer

        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        self.vocab_size = int(self._processor.vocab_size())

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        return list(self._processor.encode(text, add_bos=add_bos))


def load_tokenizer(spec: str, base_dir: Path | None = None) -> Tokenizer:
    """`"bytes"` for the shipped tokenizer, or `"sentencepiece:<path>"` (relative to `base_dir`)."""
    if spec == "bytes":
        return ByteTokenizer()
    kind, _, location = spec.partition(":")
    if kind == "sentencepiece" and location:
        path = Path(location)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return SentencePieceTokenizer(path)
    raise ValueError(f"unknown tokenizer {spec!r}: use 'bytes' or 'sentencepiece:<model file>'")


def clean_prompt(prompt: str) -> str:
    """openpi's cleaning: strip, and turn underscores and newlines into spaces."""
    return prompt.strip().replace("_", " ").replace("\n", " ")


def tokenize_prompts(
    prompts: Sequence[str], tokenizer: Tokenizer, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise like openpi's pi0 tokenizer (BOS + text + "\\n"), then pad or truncate to `max_len`.

    Returns (int64 ids [B, max_len], bool mask [B, max_len]); padding positions hold PAD_ID and False.
    """
    ids = np.full((len(prompts), max_len), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(prompts), max_len), dtype=bool)
    newline = tokenizer.encode("\n")
    for row, prompt in enumerate(prompts):
        tokens = (tokenizer.encode(clean_prompt(prompt), add_bos=True) + newline)[:max_len]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = True
    return ids, mask


class PromptCache:
    """`tokenize_prompts` with a bounded LRU cache per prompt: a robot sends the same prompt for a whole
    episode, so after its first step the tokens are a lookup, whatever the tokenizer costs.

    Holds at most `max_prompts` prompts (least recently used ones are dropped); the cached rows are
    read-only, so no caller can change what a later request gets.
    """

    def __init__(self, tokenizer: Tokenizer, max_len: int, max_prompts: int = 1024) -> None:
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be at least 1, got {max_prompts}")
        self.tokenizer, self.max_len, self.max_prompts = tokenizer, max_len, max_prompts
        self._rows: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def row(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids [max_len], mask [max_len]) of one prompt, read-only."""
        cached = self._rows.get(prompt)
        if cached is not None:
            self._rows.move_to_end(prompt)
            self.hits += 1
            return cached
        self.misses += 1
        ids, mask = tokenize_prompts([prompt], self.tokenizer, self.max_len)
        cached = (ids[0], mask[0])
        for array in cached:
            array.flags.writeable = False
        self._rows[prompt] = cached
        if len(self._rows) > self.max_prompts:
            self._rows.popitem(last=False)
        return cached

    def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Like `tokenize_prompts`: (int64 ids [B, max_len], bool mask [B, max_len]), new arrays."""
        ids = np.empty((len(prompts), self.max_len), np.int64)
        mask = np.empty((len(prompts), self.max_len), bool)
        for index, prompt in enumerate(prompts):
            ids[index], mask[index] = self.row(prompt)
        return ids, mask

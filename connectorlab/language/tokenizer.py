"""An LM's tokenizer, loaded so that its ids are the ones the checkpoint was trained with.

LLaVA-family checkpoints (Llama, Vicuna, Mistral) ship a SentencePiece `tokenizer.model`, and LLaVA trains and
evaluates them through transformers 4's slow SentencePiece tokenizer. transformers 5 builds a `tokenizers` BPE from
that file instead, and the two split runs of spaces differently ("?  ASSISTANT": ['▁▁', 'ASS'] against
['▁', '▁ASS']). So a folder with a `tokenizer.model` is checked at load: the fast tokenizer must give SentencePiece's
ids on `PARITY_STRINGS`; where it does not, the SentencePiece tokenizer is used instead.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

SP_MODEL = "tokenizer.model"
SP_PACKAGES = "pip install sentencepiece protobuf"
PARITY_STRINGS = (  # what prompts hold: role markers after spaces, space and newline runs, digits, code, unicode
    "A chat between a curious user and an artificial intelligence assistant. USER: Hi? ASSISTANT: Hello.",
    "What  is   this?  ASSISTANT: two  spaces",
    "\nAnswer the question using a single word or phrase.\n\nA. red\nB. blue",
    "def f(x):\n    return x  # four spaces\n\ttab",
    "12345 + 678.9 = 13023.9; 2024-01-01",
    "Ça va ? 日本語 😀 — naïve café",
    " leading space and trailing  ",
    "Hello.</s>USER: again</s>",
)


def _require_sentencepiece() -> None:
    try:
        import google.protobuf  # noqa: F401  (legacy=False rewrites the model's normaliser through protobuf)
        import sentencepiece  # noqa: F401
    except ImportError as err:
        raise ImportError(f"a SentencePiece tokenizer ({SP_MODEL}) needs the sentencepiece and protobuf packages: "
                          f"{SP_PACKAGES} ({err})") from None


def sentencepiece_tokenizer(path: str | Path):
    """The folder's SentencePiece model as LLaVA's slow tokenizer reads it, with the folder's legacy and BOS/EOS."""
    _require_sentencepiece()
    from .sentencepiece_llama import SentencePieceLlamaTokenizer

    cfg_path = Path(path) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    kwargs = {k: cfg[k] for k in ("legacy", "add_bos_token", "add_eos_token") if k in cfg}
    return SentencePieceLlamaTokenizer.from_pretrained(str(path), **kwargs)


def load_tokenizer(path: str | Path):
    """The fast tokenizer, unless the folder's SentencePiece model disagrees with it (then the SentencePiece one)."""
    has_sp = (Path(path) / SP_MODEL).is_file()
    if has_sp:
        _require_sentencepiece()  # transformers' own error for a missing sentencepiece names another package
    fast = AutoTokenizer.from_pretrained(str(path))
    if not has_sp:
        return fast
    slow = sentencepiece_tokenizer(path)
    same = all(fast(s, add_special_tokens=False).input_ids == slow(s, add_special_tokens=False).input_ids
               for s in PARITY_STRINGS)
    return fast if same else slow

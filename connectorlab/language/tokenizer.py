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
SPIECE_UNDERLINE = "▁"
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


def _sentencepiece_backend():
    try:
        import google.protobuf  # noqa: F401  (legacy=False rewrites the model's normaliser through protobuf)
        import sentencepiece  # noqa: F401
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
    except ImportError as err:
        raise ImportError(f"a SentencePiece tokenizer ({SP_MODEL}) needs the sentencepiece and protobuf packages: "
                          f"{SP_PACKAGES} ({err})") from None
    return SentencePieceBackend


def sentencepiece_tokenizer(path: str | Path):
    """transformers 4's slow LlamaTokenizer (LLaVA's), on transformers 5's SentencePiece backend."""
    base = _sentencepiece_backend()

    class SentencePieceLlamaTokenizer(base):
        """`legacy` decides whether text that follows a special token gets SentencePiece's prefix space ('</s>USER'
        is ['</s>', '▁US', 'ER'] with legacy and ['</s>', 'USER'] without), as in transformers 4."""

        def __init__(self, *args, add_bos_token: bool = True, add_eos_token: bool = False, **kwargs):
            self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
            kwargs.setdefault("legacy", True)  # transformers 4's default when a config does not say
            super().__init__(*args, add_bos_token=add_bos_token, add_eos_token=add_eos_token, **kwargs)

        def tokenize(self, text, **kwargs):
            if self.legacy or not text:
                return super().tokenize(text, **kwargs)
            tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
            if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
                tokens = tokens[1:]
            return tokens

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            bos = [self.bos_token_id] if self.add_bos_token else []
            eos = [self.eos_token_id] if self.add_eos_token else []
            out = bos + token_ids_0 + eos
            return out if token_ids_1 is None else out + bos + token_ids_1 + eos

        def convert_tokens_to_string(self, tokens):
            tokens = list(tokens)
            if tokens and tokens[0].startswith(SPIECE_UNDERLINE):  # the prefix space the encoder added
                tokens[0] = tokens[0][1:]
            out, run, prev_special = "", [], False
            for i, token in enumerate(tokens):
                if token in self.all_special_tokens:
                    if not prev_special and i and self.legacy:
                        out += " "
                    out += self.sp_model.decode(run) + token
                    run, prev_special = [], True
                else:
                    run.append(token)
                    prev_special = False
            return out + self.sp_model.decode(run)

        def save_pretrained(self, save_directory, *args, **kwargs):
            """Saved as a LlamaTokenizer, so that any transformers (and `load_tokenizer` again) reads it."""
            out = super().save_pretrained(save_directory, *args, **kwargs)
            cfg_path = Path(save_directory) / "tokenizer_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg.update(tokenizer_class="LlamaTokenizer", legacy=self.legacy)
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
            return out

    cfg_path = Path(path) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    kwargs = {k: cfg[k] for k in ("legacy", "add_bos_token", "add_eos_token") if k in cfg}
    return SentencePieceLlamaTokenizer.from_pretrained(str(path), **kwargs)


def load_tokenizer(path: str | Path):
    """The fast tokenizer, unless the folder's SentencePiece model disagrees with it (then the SentencePiece one)."""
    has_sp = (Path(path) / SP_MODEL).is_file()
    if has_sp:
        _sentencepiece_backend()  # transformers' own error for a missing sentencepiece names another package
    fast = AutoTokenizer.from_pretrained(str(path))
    if not has_sp:
        return fast
    slow = sentencepiece_tokenizer(path)
    same = all(fast(s, add_special_tokens=False).input_ids == slow(s, add_special_tokens=False).input_ids
               for s in PARITY_STRINGS)
    return fast if same else slow

"""transformers 4's slow LlamaTokenizer, which LLaVA trains and evaluates with, on transformers 5's SentencePiece
backend. Its own module, imported only once sentencepiece is known to be there (`tokenizer.load_tokenizer`)."""
from __future__ import annotations

import json
from pathlib import Path

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

SPIECE_UNDERLINE = "▁"


class SentencePieceLlamaTokenizer(SentencePieceBackend):
    """`legacy` decides whether text that follows a special token gets SentencePiece's prefix space ('</s>USER' is
    ['</s>', '▁US', 'ER'] with legacy and ['</s>', 'USER'] without), as in transformers 4. Defined at module level so
    that it pickles into worker processes."""

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


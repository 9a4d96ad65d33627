"""Tiny, randomly initialised towers, LMs and tokenizers built from configs, offline.

Tests, benchmarks and the probe use these so that the real loading path (`from_pretrained(dir)`)
is exercised without downloading anything.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from ..errors import InputError

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: [INST] <<SYS>> <</SYS>> [/INST] system user assistant",
    "What is in the image? Answer with the option's letter from the given choices directly.",
    "Answer the question using a single word or phrase. Is there a red circle? Yes No A. B. C. D.",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 left right above below",
]


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.save_pretrained(str(path))
    return fast


def make_bpe_tokenizer(path: str | Path, corpus: list[str] = CORPUS, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on a few sentences: spaces attach to words, as in GPT-2/Llama-3 tokenizers."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return save_tokenizer(tok, path)


def make_word_tokenizer(path: str | Path, words: list[str], whole: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Word-level vocabulary (every word and punctuation mark one id): the probe's closed language. Each of `whole`
    (e.g. a template's role markers) is one id too, punctuation included, as a subword vocabulary learns its frequent
    strings: a role marker in two ids would lengthen every turn for nothing."""
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_tokens([AddedToken(w, normalized=False) for w in whole])
    return save_tokenizer(tok, path)


def make_vision(path: str | Path, kind: str = "clip", image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                layers: int = 3, heads: int = 2, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  image_size=image_size, patch_size=patch_size)
    if kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**common))
    elif kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**common))
    else:
        raise InputError(f"unknown tiny vision kind {kind!r}; valid: clip, siglip")
    model.save_pretrained(str(path))
    return model


def make_llm(path: str | Path, tokenizer: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2, heads: int = 4,
             vocab_size: int | None = None, seed: int = 0, max_positions: int = 2048, intermediate: int | None = None):
    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=hidden,
                         intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return model

"""Inputs that the reference environment and the test suite must both build bit for bit: the conversation cases,
synthetic images and the tiny models' weights. Only torch, numpy and PIL, so it imports in both environments
(transformers 4.36 there, the project's own here); the weights are regenerated rather than committed."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

SEED = 31
TOKENIZER_FILE = "tokenizer.model.v1"  # mistral-common's Llama-style 32k SentencePiece BPE (mistral_common/data/)
MAX_NEW_TOKENS = 12  # the cap on generation in the end-to-end goldens (LLaVA's MMBench script asks 1024)


def tokenizer_config(legacy: bool) -> dict:
    """tokenizer_config.json as a Llama/Vicuna checkpoint ships it; `legacy` is the setting under test."""
    return {"tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": True, "add_eos_token": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
            "model_max_length": 2048, "padding_side": "right", "clean_up_tokenization_spaces": False,
            "sp_model_kwargs": {}}


def synthetic_image(i: int) -> Image.Image:
    """A seeded noise-and-blocks picture of a size that varies with i (square, wide and tall, for padding)."""
    rng = np.random.RandomState(SEED + i)  # RandomState's stream is fixed across numpy releases
    w, h = [(48, 48), (64, 40), (30, 56), (77, 51), (40, 40), (20, 90)][i % 6]
    arr = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
    arr[h // 4: h // 2, w // 4: w // 2] = rng.randint(0, 256, size=3)
    return Image.fromarray(arr, "RGB")


def fill(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Weights for every named shape, as float16 values (what LLaVA loads a checkpoint as): normal noise, around 1
    for norm weights. Each tensor has its own generator, so adding a name changes no other tensor."""
    out = {}
    for i, name in enumerate(sorted(shapes)):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        t = torch.randn(shapes[name], generator=g)
        if "norm" in name and name.endswith("weight"):
            t = 1 + 0.1 * t
        elif name.endswith("bias"):
            t = 0.02 * t
        else:
            t = 0.2 * t if "embed" in name or "embedding" in name else t / max(shapes[name][-1], 1) ** 0.5
        out[name] = t.to(torch.float16)
    return out


CONVERSATIONS = {  # name: (conversations, has image)
    "single_image_first": ([("human", "<image>\nWhat is shown in the picture?"), ("gpt", "A red square on grey.")], True),
    "image_last": ([("human", "What is shown here?\n<image>"), ("gpt", "Noise.")], True),
    "image_middle_spaces": ([("human", "  Describe <image>  this one.  "), ("gpt", "It is noisy. ")], True),
    "multi_turn_image": ([("human", "<image>\nHow many blocks?"), ("gpt", "One."), ("human", "What colour is it?"),
                          ("gpt", "It looks teal."), ("human", "Is it centred?"), ("gpt", "No, top left.")], True),
    "text_only": ([("human", "Name a prime number."), ("gpt", "Seven.")], False),
    "text_only_multi": ([("human", "Hi!"), ("gpt", "Hello. How can I help?"), ("human", "Count to three."),
                         ("gpt", "1, 2, 3.")], False),
    "unicode": ([("human", "<image>\nQu'est-ce que c'est ? 日本語で答えて 😀"),
                 ("gpt", "Ça ressemble à du bruit ☕ — 雑音です。")], True),
    "numbers": ([("human", "What is 12345 + 678.9 - 0.001?"), ("gpt", "13023.899")], False),
    "code": ([("human", "Fix this:\n```python\ndef f(x):\n    return x+1  # add\n```"),
              ("gpt", "```python\ndef f(x):\n    return x + 1\n```\nIndent with four spaces.")], False),
    "whitespace_runs": ([("human", "<image>\nWhat  is   this?\t\tTabs.\n\nTwo newlines.  "), ("gpt", "Two  spaces  inside.")],
                        True),
    "multiple_choice": ([("human", "<image>\nWhich colour dominates?\nA. red\nB. blue\nC. green\nD. grey\n"
                                   "Answer with the option's letter from the given choices directly."), ("gpt", "D")], True),
    "first_turn_from_gpt": ([("gpt", "I can describe images."), ("human", "<image>\nDescribe it."), ("gpt", "Grey noise.")],
                            True),
    "answer_with_eos_text": ([("human", "Which token ends a turn?"), ("gpt", "The </s> token ends it.")], False),
    "question_with_roles": ([("human", "Repeat: USER: hi ASSISTANT: hello"), ("gpt", "USER: hi ASSISTANT: hello")], False),
    "answer_leading_newline": ([("human", "<image>\nList two things."), ("gpt", "\n- noise\n- a block")], True),
}

PLAIN = {  # LLaVA's pre-training pairs: an image turn and a caption
    "caption": ([("human", "<image>\nRender a short description."), ("gpt", "grey noise with a teal block")], True),
    "caption_unicode_spaces": ([("human", "Describe.\n<image>"), ("gpt", "  bruit gris — 灰色のノイズ  ")], True),
}

PROMPTS = {  # name: (history, question); generation prompts (the user turn, then the assistant's role)
    "image_question": ([], "<image>\nWhat is shown in the picture?"),
    "text_question": ([], "Name a prime number."),
    "mc": ([], "<image>\nWhich colour?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."),
    "history": ([("human", "<image>\nHow many blocks?"), ("gpt", "One.")], "What colour is it?"),
    "spaces": ([], "<image>\nWhat  is   this?  "),
}

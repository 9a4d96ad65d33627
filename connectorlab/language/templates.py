"""Conversation templates as lists of typed parts.

A template never writes special tokens as text: `Bos` and `Stop` parts become token ids, so a
tokenizer that would split "</s>" into characters cannot turn the end of every answer into garbage.
`Text(supervised=True)` marks what the model is trained to produce.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..registry import Registry


@dataclass(frozen=True)
class Text:
    text: str
    supervised: bool = False


@dataclass(frozen=True)
class Image:
    """Where the image placeholder stood; it expands to the connector's token count."""


@dataclass(frozen=True)
class Bos:
    """The tokenizer's BOS id (omitted when the tokenizer has none)."""


@dataclass(frozen=True)
class Stop:
    """The template's end-of-turn token; supervised after an assistant turn."""

    supervised: bool = False


Part = Text | Image | Bos | Stop
IMAGE_PLACEHOLDER = "<image>"
IMAGE_LINE = IMAGE_PLACEHOLDER + "\n"  # how LLaVA's data and evaluation prompts put the image first


def with_image(text: str) -> str:
    """The user text of a single-image turn as LLaVA writes it: the image, a line break, the text."""
    return IMAGE_LINE + text


def without_image(text: str) -> str:
    """The same text with the image taken out (the blind baseline, text-only warm-up data, token counts)."""
    return text.replace(IMAGE_LINE, "").replace(IMAGE_PLACEHOLDER, "")


PLAIN_SEPARATOR = "\n"  # LLaVA's conv_llava_plain separator, which ends every pre-training caption


def split_image(text: str, supervised: bool = False) -> list[Part]:
    pieces = text.split(IMAGE_PLACEHOLDER)
    parts: list[Part] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append(Image())
        if piece:
            parts.append(Text(piece, supervised))
    return parts


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    stop_token: str | None  # None: the tokenizer's EOS

    def render(self, turns: list[tuple[str, str]], add_generation_prompt: bool = False) -> list[Part]:
        """turns: alternating ("user", text), ("assistant", text), starting with the user."""
        for i, (role, _) in enumerate(turns):
            want = "user" if i % 2 == 0 else "assistant"
            if role != want:
                raise InputError(f"turn {i} is from {role!r}; turns must alternate user/assistant starting with user")
        if add_generation_prompt and turns and turns[-1][0] != "user":
            raise InputError("a generation prompt must end with a user turn")
        return self._render(turns, add_generation_prompt)

    def _render(self, turns, add_generation_prompt):  # pragma: no cover - abstract
        raise NotImplementedError


VICUNA_ROLES = ("USER:", "ASSISTANT:")  # the role markers of vicuna_v1 (a word-level tokenizer may keep each whole)


class VicunaV1(Template):
    """LLaVA-1.5's conv_vicuna_v1: 'SYSTEM USER: q ASSISTANT: a</s>USER: ...'."""

    def _render(self, turns, add_generation_prompt):
        user, assistant = VICUNA_ROLES
        parts: list[Part] = [Bos(), Text(self.system + " ")]
        for role, msg in turns:
            if role == "user":
                parts += [Text(f"{user} "), *split_image(msg), Text(f" {assistant}")]
            else:
                parts += [Text(" " + msg, supervised=True), Stop(supervised=True)]
        return parts


class Llama2(Template):
    """LLaVA's conv_llava_llama_2 (`conv_templates["llava_llama_2"]`; LLaVA's "llama_2" key holds Meta's system
    text): '<s>[INST] <<SYS>>...<</SYS>>\\n\\nq [/INST] a </s><s>[INST] q2 [/INST] ...'."""

    def _render(self, turns, add_generation_prompt):
        parts: list[Part] = []
        for i, (role, msg) in enumerate(turns):
            if role == "user":
                head = f"[INST] <<SYS>>\n{self.system}\n<</SYS>>\n\n" if i == 0 else "[INST] "
                parts += [Bos(), Text(head), *split_image(msg), Text(" [/INST]")]
            else:
                parts += [Text(" " + msg + " ", supervised=True), Stop(supervised=True)]
        return parts


class ChatML(Template):
    """ChatML as Qwen's chat template writes it (LLaVA's chatml_direct has no newlines between turns):
    '<|im_start|>user\\nq<|im_end|>\\n<|im_start|>assistant\\na<|im_end|>\\n'."""

    def _render(self, turns, add_generation_prompt):
        parts: list[Part] = [Text(f"<|im_start|>system\n{self.system}"), Stop(), Text("\n")]
        for role, msg in turns:
            if role == "user":
                parts += [Text("<|im_start|>user\n"), *split_image(msg), Stop(), Text("\n<|im_start|>assistant\n")]
            else:
                parts += [Text(msg, supervised=True), Stop(supervised=True), Text("\n")]
        return parts


class Plain(Template):
    """LLaVA's pre-training format (`preprocess_plain`): the image, then the caption and the plain template's
    separator, a newline, supervised; the user's words are dropped. No stop token: LLaVA ends a caption with that newline."""

    def _render(self, turns, add_generation_prompt):
        parts: list[Part] = [Bos()]
        for role, msg in turns:
            if role == "user":
                parts += [p for p in split_image(msg) if isinstance(p, Image)]
            else:
                parts.append(Text(msg + PLAIN_SEPARATOR, supervised=True))
        return parts


# LLaVA-1.5's conv_vicuna_v1 ("user"; LLaVA's v0 and llava_v1 templates say "human")
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)

TEMPLATES: Registry[Template] = Registry("conversation template", {
    "vicuna_v1": VicunaV1("vicuna_v1", VICUNA_SYSTEM, None),
    "llama_2": Llama2("llama_2", LLAMA2_SYSTEM, None),
    "chatml": ChatML("chatml", "You are a helpful assistant.", "<|im_end|>"),
    "plain": Plain("plain", "", None),
    # No system prompt and the same layout as vicuna_v1: the probe's tiny word-level LM.
    "plain_v1": VicunaV1("plain_v1", "", None),
})

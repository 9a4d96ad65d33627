"""Turns conversations into input ids and labels, expanding `<image>` to the connector's token count.

Supervision is decided from character offsets of one tokenization of each text run, so the labels
always line up with the ids that are actually fed. Any token that straddles a prompt/answer
boundary, a stop token the tokenizer lacks, or an image count that does not match raises
`TokenizationMismatch`; LLaVA only warns and trains on misaligned labels.
"""
from __future__ import annotations

from dataclasses import dataclass

from .templates import TEMPLATES, Bos, Image, Part, Stop, Template, Text

IGNORE_INDEX = -100
IMAGE_TOKEN_ID = -200  # sentinel, never a vocabulary id; the model splices connector outputs there
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class TokenizationMismatch(ValueError):
    pass


class OverLength(ValueError):
    pass


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def conversation_turns(conversations: list[dict]) -> list[tuple[str, str]]:
    """LLaVA `conversations` ({from, value}) -> (role, text) pairs; raises on unknown roles or bad values."""
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"conversation turn {i} must be an object with 'from' and 'value'")
        role = ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"conversation turn {i}: unknown role {turn['from']!r}; valid: {', '.join(ROLES)}")
        if not isinstance(turn["value"], str):
            raise ValueError(f"conversation turn {i}: 'value' must be a string")
        turns.append((role, turn["value"]))
    return turns


class MultimodalProcessor:
    def __init__(self, tokenizer, template: str | Template, num_image_tokens: int, max_length: int | None = None):
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("connectorlab needs a fast tokenizer (offset mappings decide the labels)")
        self.tokenizer = tokenizer
        self.template = TEMPLATES[template] if isinstance(template, str) else template
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        stop = self.template.stop_token
        if stop is None:
            self.stop_id = tokenizer.eos_token_id
            if self.stop_id is None:
                raise TokenizationMismatch(f"template {self.template.name!r} ends turns with EOS, but the tokenizer has none")
        else:
            ids = tokenizer.convert_tokens_to_ids(stop)
            if ids is None or ids == tokenizer.unk_token_id:
                raise TokenizationMismatch(f"template {self.template.name!r} needs {stop!r} as one token; the tokenizer lacks it")
            self.stop_id = ids
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_id

    def encode(self, conversations: list[dict] | list[tuple[str, str]], num_images: int | None = None) -> Encoded:
        turns = conversation_turns(conversations) if conversations and isinstance(conversations[0], dict) else conversations
        return self._encode(self.template.render(list(turns)), num_images)

    def encode_prompt(self, question: str, history: list[tuple[str, str]] = (), num_images: int | None = None) -> list[int]:
        """Ids of a generation prompt (ending with the assistant's role marker)."""
        turns = [*history, ("user", question)]
        return self._encode(self.template.render(turns, add_generation_prompt=True), num_images).input_ids

    def _encode(self, parts: list[Part], num_images: int | None) -> Encoded:
        ids: list[int] = []
        labels: list[int] = []
        run: list[Text] = []
        images = 0

        def flush():
            if run:
                self._tokenize_run(run, ids, labels)
                run.clear()

        for part in parts:
            if isinstance(part, Text):
                run.append(part)
                continue
            flush()
            if isinstance(part, Image):
                images += 1
                ids.extend([IMAGE_TOKEN_ID] * self.num_image_tokens)
                labels.extend([IGNORE_INDEX] * self.num_image_tokens)
            elif isinstance(part, Bos):
                if self.tokenizer.bos_token_id is not None:
                    ids.append(self.tokenizer.bos_token_id)
                    labels.append(IGNORE_INDEX)
            elif isinstance(part, Stop):
                ids.append(self.stop_id)
                labels.append(self.stop_id if part.supervised else IGNORE_INDEX)
        flush()
        if images > 1:
            raise TokenizationMismatch(f"{images} '<image>' placeholders; one image per conversation is supported")
        if num_images is not None and images != num_images:
            raise TokenizationMismatch(f"conversation has {images} '<image>' placeholder(s) but {num_images} image(s) were given")
        if self.max_length is not None and len(ids) > self.max_length:
            raise OverLength(f"{len(ids)} tokens ({images * self.num_image_tokens} visual) exceed max_length={self.max_length}")
        return Encoded(ids, labels)

    def _tokenize_run(self, run: list[Text], ids: list[int], labels: list[int]) -> None:
        text = "".join(p.text for p in run)
        mask = []
        for p in run:
            mask.extend([p.supervised] * len(p.text))
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        covered = [False] * len(text)
        for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            span = mask[start:end]
            if span and any(span) != all(span):
                raise TokenizationMismatch(
                    f"token {self.tokenizer.convert_ids_to_tokens(tok)!r} at chars {start}-{end} of {text!r} "
                    "straddles a prompt/answer boundary"
                )
            ids.append(tok)
            labels.append(tok if span and span[0] else IGNORE_INDEX)
            for i in range(start, end):
                covered[i] = True
        missed = [i for i, m in enumerate(mask) if m and not covered[i] and not text[i].isspace()]
        if missed:
            raise TokenizationMismatch(f"answer characters {text[missed[0]]!r}... of {text!r} map to no token")

    def decode(self, ids: list[int]) -> str:
        if self.stop_id in ids:
            ids = ids[: ids.index(self.stop_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

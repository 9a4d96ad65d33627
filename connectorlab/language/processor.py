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
        result = self.encode_many([conversations], [num_images])[0]
        if isinstance(result, ValueError):
            raise result
        return result

    def encode_prompt(self, question: str, history: list[tuple[str, str]] = (), num_images: int | None = None) -> list[int]:
        """Ids of a generation prompt (ending with the assistant's role marker)."""
        result = self.encode_prompts([question], num_images, history)[0]
        if isinstance(result, ValueError):
            raise result
        return result

    def encode_many(self, conversations: list, num_images: list[int | None]) -> list[Encoded | ValueError]:
        """`encode` of many conversations with one tokenizer call: a call's fixed cost is most of a short text's.
        Each item is its encoding or the error `encode` would raise for it, so one bad record stops nothing."""
        parts: list = []
        for conv in conversations:
            try:
                turns = conversation_turns(conv) if conv and isinstance(conv[0], dict) else conv
                parts.append(self.template.render(list(turns)))
            except ValueError as err:
                parts.append(err)
        return self._encode_many(parts, num_images)

    def encode_prompts(self, questions: list[str], num_images: int | None = None,
                       history: list[tuple[str, str]] = ()) -> list[list[int] | ValueError]:
        """`encode_prompt` of many questions (one tokenizer call); each item is its ids or its error."""
        rendered = [self.template.render([*history, ("user", q)], add_generation_prompt=True) for q in questions]
        return [r if isinstance(r, ValueError) else r.input_ids
                for r in self._encode_many(rendered, [num_images] * len(questions))]

    def _encode_many(self, items: list, num_images: list[int | None]) -> list[Encoded | ValueError]:
        """Text runs of every item tokenized together, then each item assembled by `_encode_one`."""
        grouped = [p if isinstance(p, ValueError) else self._text_runs(p) for p in items]
        texts = ["".join(t.text for t in g) for item in grouped if not isinstance(item, ValueError)
                 for g in item if isinstance(g, list)]
        tokenized = iter(self._tokenize(texts))
        out: list[Encoded | ValueError] = []
        for groups, images in zip(grouped, num_images, strict=True):
            if isinstance(groups, ValueError):
                out.append(groups)
                continue
            try:
                out.append(self._encode_one([(g, next(tokenized) if isinstance(g, list) else None) for g in groups],
                                            images))
            except ValueError as err:
                out.append(err)
        return out

    @staticmethod
    def _text_runs(parts: list[Part]) -> list:
        """The parts with consecutive Text parts gathered into one list (a run tokenized as one text)."""
        grouped: list = []
        for part in parts:
            if isinstance(part, Text):
                if grouped and isinstance(grouped[-1], list):
                    grouped[-1].append(part)
                else:
                    grouped.append([part])
            else:
                grouped.append(part)
        return grouped

    def _tokenize(self, texts: list[str], chunk: int = 1024) -> list[tuple[list[int], list[tuple[int, int]]]]:
        out = []
        for i in range(0, len(texts), chunk):
            enc = self.tokenizer(texts[i:i + chunk], add_special_tokens=False, return_offsets_mapping=True,
                                 return_attention_mask=False, return_token_type_ids=False)
            out += list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
        return out

    def _encode_one(self, groups: list[tuple], num_images: int | None) -> Encoded:
        """`groups`: (a text run with its tokenization, or another part with None), in order."""
        ids: list[int] = []
        labels: list[int] = []
        images = 0
        for group, enc in groups:
            if isinstance(group, list):
                self._add_run(group, enc, ids, labels)
            elif isinstance(group, Image):
                images += 1
                ids.extend([IMAGE_TOKEN_ID] * self.num_image_tokens)
                labels.extend([IGNORE_INDEX] * self.num_image_tokens)
            elif isinstance(group, Bos):
                if self.tokenizer.bos_token_id is not None:
                    ids.append(self.tokenizer.bos_token_id)
                    labels.append(IGNORE_INDEX)
            elif isinstance(group, Stop):
                ids.append(self.stop_id)
                labels.append(self.stop_id if group.supervised else IGNORE_INDEX)
        if images > 1:
            raise TokenizationMismatch(f"{images} '<image>' placeholders; one image per conversation is supported")
        if num_images is not None and images != num_images:
            raise TokenizationMismatch(f"conversation has {images} '<image>' placeholder(s) but {num_images} image(s) were given")
        if self.max_length is not None and len(ids) > self.max_length:
            raise OverLength(f"{len(ids)} tokens ({images * self.num_image_tokens} visual) exceed max_length={self.max_length}")
        return Encoded(ids, labels)

    def _add_run(self, run: list[Text], enc, ids: list[int], labels: list[int]) -> None:
        tokens, offsets = enc
        if not any(p.supervised for p in run):  # a prompt: no answer to line up, no token can straddle one
            ids.extend(tokens)
            labels.extend([IGNORE_INDEX] * len(tokens))
            return
        text = "".join(p.text for p in run)
        mask = []
        for p in run:
            mask.extend([p.supervised] * len(p.text))
        covered = bytearray(len(text))
        for tok, (start, end) in zip(tokens, offsets, strict=True):
            span = mask[start:end]
            if span and any(span) != all(span):
                raise TokenizationMismatch(
                    f"token {self.tokenizer.convert_ids_to_tokens(tok)!r} at chars {start}-{end} of {text!r} "
                    "straddles a prompt/answer boundary"
                )
            ids.append(tok)
            labels.append(tok if span and span[0] else IGNORE_INDEX)
            covered[start:end] = b"\x01" * (end - start)
        missed = [i for i, m in enumerate(mask) if m and not covered[i] and not text[i].isspace()]
        if missed:
            raise TokenizationMismatch(f"answer characters {text[missed[0]]!r}... of {text!r} map to no token")

    def decode(self, ids: list[int]) -> str:
        if self.stop_id in ids:
            ids = ids[: ids.index(self.stop_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

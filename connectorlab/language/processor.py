"""Turns conversations into input ids and labels, expanding `<image>` to the connector's token count.

The ids are LLaVA's (`preprocess_v1`, `tokenizer_image_token`; tests/test_llava_fidelity.py holds them to
golden files LLaVA's code wrote): each text run between special tokens and images is tokenized as one
string, as LLaVA tokenizes its prompt string. Supervision is decided by tokenizing each run with and
without its answer, so the labels always line up with the ids that are actually fed. A token that
straddles a prompt/answer boundary, a stop token the tokenizer lacks, special-token text in a message,
or an image count that does not match raises `TokenizationMismatch`; LLaVA only warns and masks or
mislabels the sample.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .templates import IMAGE_PLACEHOLDER, TEMPLATES, Bos, Image, Part, Stop, Template, Text

IGNORE_INDEX = -100
IMAGE_TOKEN_ID = -200  # sentinel, never a vocabulary id; the model splices connector outputs there
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class TokenizationMismatch(InputError):
    pass


class SpecialTokenText(TokenizationMismatch):
    """A message holds a special token's text (e.g. "</s>" in an answer). Text is text: a tokenizer would read it as
    the token itself and end the answer mid-sentence, so such a record is refused (LLaVA drops it with a warning)."""


class OverLength(InputError):
    pass


@dataclass
class TextRun:
    """Consecutive Text parts, tokenized as one string behind `context` (the text of the special token before it)."""

    context: str
    parts: list[Text]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts)

    @property
    def answer(self) -> str:
        return "".join(p.text for p in self.parts if p.supervised)

    def texts(self) -> list[str]:
        """What to tokenize: the run, and its prompt part when an answer follows one (the labels' boundary)."""
        flags = [p.supervised for p in self.parts]
        if flags != sorted(flags):
            raise InputError("a text run must be its prompt, then its answer")  # a template bug, not a data problem
        prompt = "".join(p.text for p in self.parts if not p.supervised)
        return [self.context + self.text] + ([self.context + prompt] if any(flags) and prompt else [])


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    dropped_leading_turn: bool = False  # a leading assistant turn was dropped, as LLaVA's preprocess does

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def conversation_turns(conversations: list[dict]) -> list[tuple[str, str]]:
    """LLaVA `conversations` ({from, value}) -> (role, text) pairs; raises on unknown roles or bad values."""
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise InputError(f"conversation turn {i} must be an object with 'from' and 'value'")
        role = ROLES.get(turn["from"])
        if role is None:
            raise InputError(f"conversation turn {i}: unknown role {turn['from']!r}; valid: {', '.join(ROLES)}")
        if not isinstance(turn["value"], str):
            raise InputError(f"conversation turn {i}: 'value' must be a string")
        turns.append((role, turn["value"]))
    return turns


class MultimodalProcessor:
    def __init__(self, tokenizer, template: str | Template, num_image_tokens: int, max_length: int | None = None):
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
        self.stop_text = tokenizer.convert_ids_to_tokens(self.stop_id)
        self.special_texts = tuple(t for t in tokenizer.all_special_tokens if t and t != IMAGE_PLACEHOLDER)
        self._context_cache: dict[str, list[int]] = {}

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
        dropped: list[bool] = []
        for conv in conversations:
            drop = False
            try:
                turns = list(conversation_turns(conv) if conv and isinstance(conv[0], dict) else conv)
                drop = len(turns) > 1 and turns[0][0] == "assistant"
                turns = turns[drop:]
                self._check_text(turns)
                parts.append(self.template.render(turns))
            except ValueError as err:
                parts.append(err)
            dropped.append(drop)
        out = self._encode_many(parts, num_images)
        for enc, drop in zip(out, dropped, strict=True):
            if isinstance(enc, Encoded):
                enc.dropped_leading_turn = drop
        return out

    def _check_text(self, turns) -> None:
        for i, (_, text) in enumerate(turns):
            found = next((t for t in self.special_texts if t in text), None)
            if found is not None:
                raise SpecialTokenText(f"turn {i} holds the text of the special token {found!r}")

    def encode_prompts(self, questions: list[str], num_images: int | None = None,
                       history: list[tuple[str, str]] = ()) -> list[list[int] | ValueError]:
        """`encode_prompt` of many questions (one tokenizer call); each item is its ids or its error."""
        rendered = []
        for q in questions:
            try:
                self._check_text([*history, ("user", q)])
                rendered.append(self.template.render([*history, ("user", q)], add_generation_prompt=True))
            except ValueError as err:
                rendered.append(err)
        return [r if isinstance(r, ValueError) else r.input_ids
                for r in self._encode_many(rendered, [num_images] * len(questions))]

    def _encode_many(self, items: list, num_images: list[int | None]) -> list[Encoded | ValueError]:
        """Text runs of every item tokenized together, then each item assembled by `_encode_one`."""
        grouped = [p if isinstance(p, ValueError) else self._text_runs(p) for p in items]
        runs = [g for item in grouped if not isinstance(item, ValueError) for g in item if isinstance(g, TextRun)]
        per_run = [run.texts() for run in runs]
        tokenized = iter(self._tokenize([t for texts in per_run for t in texts]))
        ids_of = {id(run): [next(tokenized) for _ in texts] for run, texts in zip(runs, per_run, strict=True)}
        out: list[Encoded | ValueError] = []
        for groups, images in zip(grouped, num_images, strict=True):
            if isinstance(groups, ValueError):
                out.append(groups)
                continue
            try:
                out.append(self._encode_one(groups, ids_of, images))
            except ValueError as err:
                out.append(err)
        return out

    def _text_runs(self, parts: list[Part]) -> list:
        """The parts with consecutive Text parts gathered into one `TextRun` (tokenized as one text, as LLaVA
        tokenizes its whole prompt string). A run after a special token (a stop, or a BOS that does not open the
        sequence) is tokenized behind that token's text, so the tokenizer decides, as it does on LLaVA's string,
        whether text after a special token starts with SentencePiece's prefix space (`legacy`)."""
        grouped: list = []
        for i, part in enumerate(parts):
            if not isinstance(part, Text):
                grouped.append(part)
                continue
            if not grouped or not isinstance(grouped[-1], TextRun):
                prev = parts[i - 1] if i else None
                context = (self.stop_text if isinstance(prev, Stop) else
                           self.tokenizer.bos_token if isinstance(prev, Bos) and i > 1 else "")
                grouped.append(TextRun(context, []))
            grouped[-1].parts.append(part)
        return grouped

    def _tokenize(self, texts: list[str], chunk: int = 1024) -> list[list[int]]:
        out = []
        for i in range(0, len(texts), chunk):
            out += self.tokenizer(texts[i:i + chunk], add_special_tokens=False, return_attention_mask=False,
                                  return_token_type_ids=False)["input_ids"]
        return out

    def _encode_one(self, groups: list, ids_of: dict, num_images: int | None) -> Encoded:
        ids: list[int] = []
        labels: list[int] = []
        images = 0
        for group in groups:
            if isinstance(group, TextRun):
                self._add_run(group, ids_of[id(group)], ids, labels)
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
            raise TokenizationMismatch(f"{images} '{IMAGE_PLACEHOLDER}' placeholders; one image per conversation is supported")
        if num_images is not None and images != num_images:
            raise TokenizationMismatch(f"conversation has {images} '{IMAGE_PLACEHOLDER}' placeholder(s) but {num_images} "
                                      "image(s) were given")
        if self.max_length is not None and len(ids) > self.max_length:
            raise OverLength(f"{len(ids)} tokens ({images * self.num_image_tokens} visual) exceed max_length={self.max_length}")
        return Encoded(ids, labels)

    def _add_run(self, run: TextRun, tokenized: list[list[int]], ids: list[int], labels: list[int]) -> None:
        """Labels from two tokenizations, the whole run and its prompt part: the answer is clean when the prompt's
        ids are a prefix of the run's (any tokenizer, fast or slow, no offsets needed)."""
        context = self._context_ids(run.context)
        whole = self._strip_context(tokenized[0], context, run)
        supervised = len(whole) if run.answer and len(tokenized) == 1 else 0  # an answer from the run's first char
        if len(tokenized) == 2:
            prompt = self._strip_context(tokenized[1], context, run)
            if whole[:len(prompt)] != prompt:
                at = next((i for i, (a, b) in enumerate(zip(whole, prompt, strict=False)) if a != b),
                          min(len(whole), len(prompt)))
                raise TokenizationMismatch(f"token {self.tokenizer.convert_ids_to_tokens(whole[at:at + 1])} of "
                                           f"{run.text!r} straddles a prompt/answer boundary")
            supervised = len(whole) - len(prompt)
        if run.answer.strip() and not supervised:
            raise TokenizationMismatch(f"answer {run.answer!r} of {run.text!r} maps to no token")
        ids.extend(whole)
        labels.extend([IGNORE_INDEX] * (len(whole) - supervised) + whole[len(whole) - supervised:])

    def _context_ids(self, context: str) -> list[int]:
        if context not in self._context_cache:
            self._context_cache[context] = self._tokenize([context])[0] if context else []
        return self._context_cache[context]

    def _strip_context(self, ids: list[int], context: list[int], run: TextRun) -> list[int]:
        if ids[:len(context)] != context:
            raise TokenizationMismatch(f"{run.text!r} merges into the special token before it")
        return ids[len(context):]

    def decode(self, ids: list[int]) -> str:
        if self.stop_id in ids:
            ids = ids[: ids.index(self.stop_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

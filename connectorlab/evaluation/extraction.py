"""Answer extraction as the official tools do it, without an LLM judge.

Every rule only works when a model answers tersely, which under-trained connector variants often
do not; callers count `None` (an extraction failure) and report the rate.
"""
from __future__ import annotations

import re


def mme_answer(prediction: str) -> str:
    """MME's official `calculation.py`: lower-case (no strip), exact yes/no, else yes/no within the
    first four characters, else `other` (scored wrong). 'Not really' reads as no, 'Y' as other."""
    pred = prediction.lower()
    if pred in ("yes", "no"):
        return pred
    head = pred[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


_START = [
    re.compile(r"^\(?([A-Z])\)?$"),  # bare letter, optionally parenthesised
    re.compile(r"^([A-Z])[.,:)]"),  # "B." "B," "B:" "B)"
    re.compile(r"^\(([A-Z])\)"),  # "(B) ..."
]
_ANYWHERE = [
    # "Answer: B", "the answer is B." (the letter itself must be upper case and not start a word: "is A train")
    re.compile(r"\b(?i:answer)\s*(?:(?i:is)|:)\s*\(?([A-Z])\b(?![ \t]+[a-z])"),
]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .")


def extract_choice(prediction: str, options: dict[str, str]) -> str | None:
    """Letter of the chosen option, or None when undecidable.

    Order: a bare letter; a letter pattern at the start (`B.`, `(B)`, `B)`); `Answer: B` or `the answer
    is B`; then option text: an exact match, else exactly one option text contained in the output.
    A letter must name a present option; 'A train' (meaning option D 'a train') is text, not a letter.
    """
    text = prediction.strip()
    letters = set(options)
    for pattern in _START:
        m = pattern.match(text)
        if m and m.group(1) in letters:
            return m.group(1)
    found = {m.group(1).upper() for p in _ANYWHERE for m in p.finditer(text)} & letters
    if len(found) == 1:
        return found.pop()
    norm = _norm(text)
    exact = [k for k, v in options.items() if _norm(v) == norm and norm]
    if len(exact) == 1:
        return exact[0]
    contained = [k for k, v in options.items() if _norm(v) and re.search(rf"(?<!\w){re.escape(_norm(v))}(?!\w)", norm)]
    if len(contained) == 1:
        return contained[0]
    return None

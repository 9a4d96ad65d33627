"""Exact-key registries.

Name matching by substring or regex (TinyLLaVA, LLaVA) lets two components collide silently; here a
name either matches exactly or the error lists every valid name.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import InputError

T = TypeVar("T")


class UnknownNameError(KeyError, InputError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: dict[str, T] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        for name, value in (entries or {}).items():
            self.register(name, value)

    def register(self, name: str, value: T) -> T:
        if name in self._entries:
            raise InputError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = value
        return value

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

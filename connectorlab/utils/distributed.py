"""Decisions the main process makes for every process (a lock, a folder check): its outcome, error included, is
broadcast, so that the other processes raise together instead of waiting at the next barrier for a main process
that has gone."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from .io import exclusive


def process_state() -> PartialState:
    """This process's place in the launch. Without a GPU, `cpu=True` is what lets a multi-process launch
    (`accelerate launch --multi_gpu`, torchrun) join a gloo group on the CPU instead of running N lone copies."""
    import torch

    return PartialState(cpu=not torch.cuda.is_available())


def _share(state: PartialState, error: BaseException | None) -> None:
    if state.num_processes > 1:
        message = [error]
        broadcast_object_list(message, from_process=0)
        error = message[0]
    if error is not None:
        raise error


def on_main(state: PartialState, fn: Callable[[], None]) -> None:
    """Run `fn` on the main process only; an exception it raises is raised on every process."""
    error = None
    if state.is_main_process:
        try:
            fn()
        except Exception as err:  # re-raised below, on this process and on the others
            error = err
    _share(state, error)


def decided_on_main(state: PartialState, fn: Callable[[], object]) -> object:
    """`fn()` on the main process, its result (or its exception) handed to every process."""
    value, error = None, None
    if state.is_main_process:
        try:
            value = fn()
        except Exception as err:  # re-raised below, on every process
            error = err
    if state.num_processes > 1:
        message = [(value, error)]
        broadcast_object_list(message, from_process=0)
        value, error = message[0]
    if error is not None:
        raise error
    return value


@contextlib.contextmanager
def main_process_lock(folder: str | Path, what: str, state: PartialState) -> Iterator[None]:
    """The main process holds `folder/.lock` (see `exclusive`); when it cannot, every process refuses together."""
    with contextlib.ExitStack() as stack:
        on_main(state, lambda: stack.enter_context(exclusive(folder, what)))
        yield

"""`connectorlab` command line: a thin layer over the library API. `app.py` holds the typer app; each command module
registers its commands on it when imported here."""
from __future__ import annotations

import os
import sys

from . import evaluate as _evaluate  # noqa: F401  (registers eval and score)
from . import interop as _interop  # noqa: F401  (registers export and import)
from . import probe as _probe  # noqa: F401  (registers probe)
from . import study as _study  # noqa: F401  (registers study)
from .app import INTERRUPTED_EXIT, Interrupted, _debug, _on_sigint, app, errors, is_expected, report_interrupt

__all__ = ["app", "main"]


def close_process_group(finished: bool) -> None:
    """A launched worker must take its process group down before the interpreter exits: gloo's threads left running
    at exit abort the process ("terminate called without an active exception"), which fails a finished launch.
    After a finished command the processes first meet at a barrier, so that none tears its connections down while
    another is still printing or releasing a lock; after an error the others may never arrive, so there is no barrier
    then (docs/notes.md has the history). A DeepSpeed worker whose command
    finished leaves at once after the barrier instead (`exit_launched_worker`)."""
    dist = sys.modules.get("torch.distributed")  # a command that never imported torch has no group to close
    if dist is not None and dist.is_available() and dist.is_initialized():
        if finished:
            dist.barrier()
            if "deepspeed" in sys.modules and os.environ.get("LOCAL_RANK") is not None:
                exit_launched_worker()
        dist.destroy_process_group()


def exit_launched_worker() -> None:
    """Its results written and its files closed, a launched DeepSpeed worker leaves without tearing the group down:
    DeepSpeed's communication threads abort an orderly shutdown now and then (docs/notes.md), which would turn a
    finished run into a failed one."""
    import logging

    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    finished = False
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        app(prog_name="connectorlab")
        finished = True
    except SystemExit as done:  # typer ends every command this way, successful ones with code 0
        finished = done.code in (None, 0)
        raise
    except (Interrupted, KeyboardInterrupt):
        report_interrupt()
        sys.exit(INTERRUPTED_EXIT)
    except Exception as err:
        if _debug["on"] or not is_expected(err):
            raise
        errors.print(f"[bold red]error:[/bold red] {err}", highlight=False, soft_wrap=True)
        errors.print("[dim](run with --debug for the traceback)[/dim]")
        sys.exit(2)
    finally:
        close_process_group(finished)


if __name__ == "__main__":  # pragma: no cover
    main()

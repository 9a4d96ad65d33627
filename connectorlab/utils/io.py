"""Atomic writes: a crash leaves either the old file or the new one, never half of one.

`mkstemp`/`mkdtemp` create 0600/0700 entries for their own safety; the final file or folder is given
the mode a plain `open(path, "w")` or `mkdir` would have, so results stay readable by whoever the
user's umask lets read them.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import BusyError, DiskFullError, InputError, NotAFileError, OutputExistsError  # noqa: F401  (re-exported)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def make_temp_dir(parent: Path, name: str) -> Path:
    """A hidden sibling folder with the permissions `mkdir` would give it."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


OUTPUT_MARKER = ".connectorlab-output.json"  # what wrote a folder: an earlier output of the same kind may be replaced


def _within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_output(path: str | Path, kind: str, overwrite: bool = False, sources: tuple[str | Path, ...] = ()) -> Path:
    """Refuse to write `path` where that would destroy something: a source of the output (the folder itself, a folder
    inside it, or one that holds it), never allowed; or a non-empty folder that is not an earlier output of `kind`,
    allowed with `overwrite`. Returns the resolved path (so that `.` has a parent to hold the temporary folder)."""
    path = Path(path).resolve()
    for source in sources:
        src = Path(source).resolve()
        if _within(path, src) or _within(src, path):
            where = "is" if path == src else "is inside" if _within(path, src) else "holds"
            raise OutputExistsError(f"--out {path} {where} the source {src}: writing it would destroy the source; "
                                    "choose a folder outside it")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"--out {path} is a file; choose a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        marker = path / OUTPUT_MARKER
        wrote = json.loads(marker.read_text()).get("kind") if marker.is_file() else None
        if wrote != kind:
            entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
            what = f"an earlier {wrote}" if wrote else f"{len(entries)} entries ({', '.join(entries[:5])}" \
                f"{', ...' if len(entries) > 5 else ''})"
            raise OutputExistsError(f"--out {path} holds {what}, not an earlier {kind}; it would be replaced: choose "
                                    "an empty or new folder, or pass --overwrite to replace it")
    return path


def claim_output(path: str | Path, kind: str, overwrite: bool = False, sources: tuple[str | Path, ...] = ()) -> Path:
    """`check_output`, then mark the folder as `kind`'s, for a command that writes into it file by file."""
    path = check_output(path, kind, overwrite, sources)
    atomic_write_json(path / OUTPUT_MARKER, {"kind": kind})
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str, overwrite: bool = False,
               sources: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` in one rename (`check_output` first)."""
    path = check_output(path, kind, overwrite, sources)
    tmp = make_temp_dir(path.parent, path.name)
    try:
        yield tmp
        atomic_write_json(tmp / OUTPUT_MARKER, {"kind": kind})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_complete_jsonl(path: str | Path) -> list[Any]:
    """The complete lines of an append-only JSONL file. A last line cut short by a crash or a full disk is
    removed from the file (so the next append starts on a fresh line); a bad line before it is an error
    naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return parse_jsonl(data[:end].decode("utf-8", errors="replace"), path)


def parse_jsonl(text: str, path: str | Path, error: type[Exception] = ValueError) -> list:
    """One JSON value per non-empty line; a bad line is named by file and line number."""
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise error(f"{path}: line {n}: invalid JSON ({err.msg})") from None
    return records


def is_disk_full(err: BaseException, folder: Path) -> bool:
    """torch.save reports a full disk as `RuntimeError: [enforce fail at inline_container.cc]`, not ENOSPC;
    the free space of the target folder tells the two apart."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, RuntimeError) and "inline_container" in str(err):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < 64 * 2**20
    return False


def free_mib(folder: Path) -> float:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(folder).free / 2**20
    return float("nan")


LOCK_NAME = ".lock"  # held in an output folder by the one process writing it


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str) -> Iterator[None]:
    """Hold `folder/.lock` for the duration, or refuse at once: two runs into one folder would compute
    everything twice and interleave their writes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BusyError(f"{folder} is in use by another {what} (lock {folder / LOCK_NAME} is held); "
                        "wait for it to finish or use another output folder") from None
    try:
        yield
    finally:
        lock.release()


def read_utf8(path: str | Path) -> str:
    """UTF-8 text, as the official evaluation tools read it; another encoding is named with the file."""
    path = Path(path)
    if path.is_dir():
        raise NotAFileError(f"{path}: is a folder, expected a file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            kind = "it is UTF-16 (it starts with a UTF-16 byte-order mark)"
        else:
            kind = f"byte 0x{data[err.start]:02x} at offset {err.start} is not UTF-8 (Latin-1 or another legacy encoding?)"
        raise InputError(f"{path}: not UTF-8 text: {kind}; re-save it as UTF-8") from None


def update_with_file(digest, path: Path) -> None:
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)


def file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    update_with_file(digest, Path(path))
    return digest.hexdigest()


def is_locked(path: str | Path) -> bool:
    """Whether another process holds the lock file at `path` now (without waiting, and without keeping it)."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def fingerprint_folder(folder: str | Path) -> str:
    """sha256 over every file of a folder (relative path and content, hidden files excepted): a model retrained
    in place gets a new fingerprint even though its path is the same."""
    import hashlib

    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(str(rel).encode() + b"\0")
        update_with_file(digest, path)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()

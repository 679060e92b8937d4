"""Writing files atomically: the one way every output, checkpoint, report and engine reaches disk.

A file is written to a hidden temp name in its own folder, fsynced, then renamed over the final
name, so a reader (or a rerun after a kill) never sees a partial file, and a failure leaves nothing.
Temp names are ``.NAME.pconv-tmp-PID-RANDOM``: unique per process and call, and recognisable, so
cleanup removes only what this tool made (``stale_temp_of``) and never a user's ``.x.tmp-1`` file.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".pconv-tmp-"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (umask has no getter); files get the mode open() would give
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.pconv-tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_path(path: Path) -> Path:
    """A fresh temp name beside ``path``, unique per process and call."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_write(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path to write; on success it is fsynced and renamed to ``path``, on failure removed.

    >>> with atomic_write("out/model.onnx") as tmp:
    ...     onnx.save_model(proto, str(tmp))
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # some writers (safetensors) create 0600 files
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


_dir_lock = threading.Lock()


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (a crash right after it must not lose the file)."""
    with _dir_lock:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def stale_temp_of(name: str) -> tuple[str, int] | None:
    """``(target name, pid)`` if ``name`` is one of our temp names, else None."""
    m = _TEMP_NAME.match(name)
    return (m.group("target"), int(m.group("pid"))) if m else None


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier, dead process with a recycled pid cannot be in use yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(folder: Path, targets: set[str] | None = None) -> Iterator[os.DirEntry]:
    """Our temp names in ``folder`` whose process is gone (files or folders; of the final names ``targets``)."""
    for entry in os.scandir(folder):
        parsed = stale_temp_of(entry.name)
        if parsed is not None and (targets is None or parsed[0] in targets) and not pid_alive(parsed[1]):
            yield entry


def clean_stale_temps(folder: Path, targets: set[str] | None = None) -> int:
    """Delete our temp files left by killed runs (their process is gone); returns how many.

    With ``targets``, only temps of those final names are touched (the outputs this run would write).
    """
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in stale_temps(folder, targets):
        if entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed

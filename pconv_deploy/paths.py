"""Checking a command's file and folder arguments up front, before any model is loaded or work done.

A bad path must cost the user one clear line and nothing else: not a traceback, not minutes of
work followed by a failed write, not a half-created folder or a stray temp file. So every
command validates where it will read and write first. Output folders that do not exist yet are
created and removed again as a probe, and existing ones get a probe file created and deleted:
only a real write knows about read-only mounts, /proc and /sys, or permissions that root's
``os.access`` does not see.

Torch-free and dependency-free, so `pconv infer` from the runtime-only install runs it too.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from pconv_deploy.errors import UsageError


class PathArgumentError(UsageError):
    """A file or folder argument that cannot work; the CLI exits 2 (a usage error)."""


def _dangling(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def describe(path: Path) -> str:
    """What is at ``path``, for messages: 'a folder', 'a file', 'a dangling symbolic link', ..."""
    if _dangling(path):
        return f"a dangling symbolic link (to {os.readlink(path)})"
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return "a file"
    if not path.exists():
        return "missing"
    mode = path.stat().st_mode  # a link to /dev/zero or a FIFO: say what it is, never "no such file"
    return "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"


def check_input_file(path: Path, option: str, suffixes: Sequence[str] = (), *, missing: bool = False) -> Path:
    """A non-empty regular file (with one of ``suffixes`` when given), not a folder or a dangling link.

    A path that does not exist at all passes unless ``missing``: every loader reports that itself,
    in words the tests and users already know ("no such checkpoint file").
    """
    path = Path(path)
    if not path.exists() and not _dangling(path) and not missing:
        return path
    if not path.is_file():
        what = describe(path)
        what = (
            "no such file" if what == "missing" else f"is {what}, not a {'file' if path.is_dir() else 'regular file'}"
        )
        raise PathArgumentError(f"{option} {path}: {what}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise PathArgumentError(f"{option} {path}: expected a {' or '.join(suffixes)} file")
    if path.stat().st_size == 0:
        raise PathArgumentError(f"{option} {path}: the file is empty (0 bytes)")
    return path


def _probe_create(folder: Path, option: str, shown: Path) -> None:
    """Create the missing part of ``folder`` and remove it again: proves it can be made, leaves nothing."""
    missing = []
    existing = folder
    while not existing.exists():
        if _dangling(existing):
            raise PathArgumentError(f"{option} {shown}: {existing} is {describe(existing)}")
        missing.append(existing)
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PathArgumentError(f"{option} {shown}: {existing} is {describe(existing)}, not a folder")
    created = []
    try:
        for level in reversed(missing):
            level.mkdir()
            created.append(level)
    except OSError as e:
        raise PathArgumentError(f"{option} {shown}: cannot create folder {level} ({e.strerror or e})") from None
    finally:
        for level in reversed(created):
            try:
                level.rmdir()
            except OSError:
                pass


def _probe_write(folder: Path, option: str, shown: Path) -> None:
    """Create and delete a file in ``folder``: only a real write knows (root passes ``os.access`` on /sys)."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".pconv-probe-")
    except OSError as e:
        raise PathArgumentError(f"{option} {shown}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


def _probe_folder(folder: Path, option: str, shown: Path) -> None:
    """Prove a file can be written in ``folder``: into it when it is a folder, else by making it."""
    if folder.is_dir():
        _probe_write(folder, option, shown)
    else:
        _probe_create(folder, option, shown)  # also refuses a file or dangling link on the way


def _same_input(path: Path, inputs: Iterable[tuple[Path, str]]) -> tuple[Path, str] | None:
    """The (path, option) among ``inputs`` that ``path`` already is (same file or folder), if any."""
    if not path.exists():
        return None
    return next(((other, opt) for other, opt in inputs if Path(other).exists() and os.path.samefile(path, other)), None)


def check_output_dir(
    path: Path, option: str, inputs: Iterable[tuple[Path, str]] = (), *, files: Sequence[str] = ()
) -> Path:
    """A folder this command may create or write into, not one of its ``inputs`` (path, option), and
    with no folder (or device) sitting where it will write the named ``files``."""
    path = Path(path)
    for name in files:
        target = path / name
        if target.is_dir() or (target.exists() and not target.is_file()):
            raise PathArgumentError(f"{option} {path}: {target} is {describe(target)}, where a file will be written")
    if path.exists() and not path.is_dir():
        raise PathArgumentError(f"{option} {path}: exists and is {describe(path)}, not a folder")
    _probe_folder(path, option, path)
    if same := _same_input(path, inputs):
        raise PathArgumentError(f"{option} {path}: is the same folder as {same[1]} {same[0]}; choose another")
    return path


def check_output_file(
    path: Path, option: str, inputs: Iterable[tuple[Path, str]] = (), *, suffixes: Sequence[str] = ()
) -> Path:
    """A file this command may (atomically) write: its folder can be made or written, it is no folder itself,
    not a device, not one of ``inputs`` (path, option), and has one of ``suffixes`` when given."""
    path = Path(path)
    if path.is_dir():
        raise PathArgumentError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise PathArgumentError(f"{option} {path}: exists and is not a regular file")
    if suffixes and path.suffix.lower() not in suffixes:
        raise PathArgumentError(f"{option} {path}: the file name must end in {' or '.join(suffixes)}")
    _probe_folder(path.parent, option, path)
    if same := _same_input(path, inputs):
        raise PathArgumentError(f"{option} {path}: is {same[1]} {same[0]}; it would be replaced")
    return path


def check_not_inside(path: Path, folder: Path, option: str, *, shown: str) -> None:
    """Refuse an input inside a folder the command writes or replaces (``triton-repo --overwrite`` would delete it)."""
    if Path(path).resolve().is_relative_to(Path(folder).resolve()):
        raise PathArgumentError(
            f"{option} {path}: is inside {folder}, the folder {shown} writes (and replaces with --overwrite); "
            "give a model from elsewhere"
        )


def check_folder_job(images: Path, masks: Path, output: Path, *, report: Path | None = None) -> None:
    """``pconv infer``'s paths, before the model loads: inputs exist, output and report can be written.

    The output folder must not be the images or masks folder: outputs would become inputs (the
    next run fails on "same stem") or replace masks; images and masks cannot share a folder either
    (each image would be its own mask). Nesting is allowed: discovery does not recurse,
    so ``--output images/out`` never reads its own outputs. A report must not replace an input
    and must not land in the images or masks folder, where the next run would take it for an input.
    """
    images, masks, output = Path(images), Path(masks), Path(output)
    for path, option in ((images, "--images"), (masks, "--masks")):
        if not path.exists():
            what = describe(path) if _dangling(path) else "no such file or folder"
            raise PathArgumentError(f"{option} {path}: {what}")
    if os.path.samefile(images, masks):
        raise PathArgumentError(
            f"--masks {masks}: is --images itself; masks pair with images by file stem, so they need their own "
            "folder (or one mask file for all images)"
        )
    inputs = [(images, "--images"), (masks, "--masks")]
    check_output_dir(output, "--output", inputs)
    if report is None:
        return
    from pconv_deploy.contract import IMAGE_SUFFIXES

    if Path(report).suffix.lower() in IMAGE_SUFFIXES:
        raise PathArgumentError(f"--report {report}: the report is JSON; an image file name could replace an output")
    if Path(os.path.abspath(report)) == Path(os.path.abspath(output)):
        raise PathArgumentError(f"--report {report}: is the --output folder; give the report its own file name")
    check_output_file(Path(report), "--report", inputs)
    for folder, option in inputs:
        if folder.is_dir() and Path(report).parent.exists() and os.path.samefile(Path(report).parent, folder):
            raise PathArgumentError(f"--report {report}: is inside the {option} folder; put the report elsewhere")

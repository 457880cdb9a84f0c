"""Folders the user names (--out, --storage, the spool) and the files built inside them from a study."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from orchestrator.errors import UserError

# errno values that mean "the disk is full" rather than "this path is wrong".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def writable_folder(path: str | os.PathLike, option: str) -> Path:
    """Create `path` if needed and prove it takes a file, or refuse with one line naming `option`
    (before anything is trained or tracked)."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ltkd-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({os_reason(exc)})") from None
    return folder


def file_inside(folder: Path, name: str) -> Path:
    """`folder/name` for a file name built from a study (validated names cannot leave the folder;
    this holds whatever a later rule lets through)."""
    path = folder / name
    if Path(name).name != name or name in ("", ".", "..") or path.parent.resolve() != folder.resolve():
        raise UserError(f"{name!r}: not a plain file name; it would be written outside {folder}")
    return path


def os_reason(exc: OSError) -> str:
    """'No space left on device' style reason of an OSError, without the errno prefix and path."""
    return exc.strerror or str(exc) or type(exc).__name__


def disk_full_error(exc: BaseException) -> OSError | None:
    """The disk-full OSError in an exception's cause/context chain (Ray and MLflow wrap them)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def write_text(path: Path, text: str) -> None:
    """Path.write_text, whose failure names the file (a failed write() alone does not)."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        if exc.filename:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc

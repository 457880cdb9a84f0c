"""Errors the command line turns into one line and an exit status, and the redaction every such line
(and every tag, report and file the project writes) passes through."""
import re

# `scheme://user:password@`: the password part, up to the '@' that ends the userinfo.
_USERINFO_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):(?P<password>[^\s@/]*)@")


def redact_credentials(text: str) -> str:
    """A URI, or a line that holds URIs, as ltkd may show it: the password of every `user:password@`
    replaced by `***`."""
    return _USERINFO_PASSWORD.sub(lambda m: f"{m['head']}:***@", text)


def without_userinfo(uri: str) -> str:
    """A URI with its `user:password@` (or `user@`) removed: an address to show as a link."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first non-blank line of an exception's message (or of a text), redacted and cut to `limit`;
    "" when there is none (`TimeoutError()`): an error handler that shows it never raises itself."""
    for line in str(exc).splitlines():
        if line.strip():
            return redact_credentials(line.strip())[:limit]
    return ""


def describe(exc: BaseException, limit: int = 200) -> str:
    """An exception as `Type: first line`, or its type alone when its message is empty."""
    line = first_line(exc, limit)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def error_line(exc: BaseException, limit: int = 600) -> str:
    """An error as one line: its first line, and its last one when that says more (MLflow and Ray
    put the cause of a multi-line message last). Never a traceback, never a password."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(("Traceback", "File \"", "#####"))]
    text = lines[0] if lines else ""
    if len(lines) > 1 and lines[-1] not in text:
        text = f"{text.rstrip(':')}: {lines[-1]}"
    return redact_credentials(f"{type(exc).__name__}: {text}")[:limit] if text else type(exc).__name__


class UserError(Exception):
    """Bad input (study file, option, unreachable server): exit status 2, one line, no traceback."""


class RunFailure(Exception):
    """A failure while running (a trial failed): exit status 1."""

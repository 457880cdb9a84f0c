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


class UserError(Exception):
    """Bad input (study file, option, unreachable server): exit status 2, one line, no traceback."""


class RunFailure(Exception):
    """A failure while running (a trial failed): exit status 1."""

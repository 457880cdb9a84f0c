"""The one-line form of an exception that every error handler prints: safe on empty messages."""
import pytest

from orchestrator.errors import describe, first_line


@pytest.mark.parametrize("exc, line, described", [
    (TimeoutError(), "", "TimeoutError"),  # no message: the handler must not raise IndexError
    (OSError("\n  \n"), "", "OSError"),
    (ValueError("  bad value \nTraceback ..."), "bad value", "ValueError: bad value"),
    (RuntimeError("\nconnect to http://u:secret@host:5000/ failed"), "connect to http://u:***@host:5000/ failed",
     "RuntimeError: connect to http://u:***@host:5000/ failed"),
])
def test_first_line_and_describe(exc, line, described):
    assert first_line(exc) == line
    assert describe(exc) == described


def test_lines_are_cut_to_the_limit():
    assert first_line(ValueError("x" * 500), 10) == "x" * 10
    assert describe(KeyError("k")) == "KeyError: 'k'"

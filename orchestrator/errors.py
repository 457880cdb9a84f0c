"""Errors the command line turns into one line and an exit status."""


class UserError(Exception):
    """Bad input (study file, option, unreachable server): exit status 2, one line, no traceback."""


class RunFailure(Exception):
    """A failure while running (a trial failed): exit status 1."""

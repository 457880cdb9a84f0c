"""How numbers read in what ltkd prints: '1 trial', '2 trials' (every command and table uses this)."""


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 run', '2 runs', '0 runs': a number with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"

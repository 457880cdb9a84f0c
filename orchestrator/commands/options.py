"""Checks of command-line options that several commands share: one line naming the option, its value
and what is allowed."""
from __future__ import annotations

import math
import threading

from orchestrator.errors import UserError

# Tune's storage URIs go through pyarrow.fs.FileSystem.from_uri: the schemes it knows ("file" included).
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def check_storage(storage: str | None) -> None:
    """A --storage URI of a scheme Tune cannot open fails every trial's first checkpoint: refused here."""
    if not storage or "://" not in storage:
        return
    scheme = storage.split("://", 1)[0].lower()
    if scheme not in STORAGE_SCHEMES:
        raise UserError(f"--storage {storage}: unknown scheme {scheme!r}; allowed: a path, or a URI of "
                        f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}")


def check_duration(option: str, value: float, unit: str, zero_allowed: bool) -> None:
    """A waiting time: a finite number that the timers it sets can hold (threading.TIMEOUT_MAX seconds)."""
    seconds = value * (60 if unit == "minutes" else 1)
    longest = threading.TIMEOUT_MAX / (60 if unit == "minutes" else 1)
    if not (value > 0 or (zero_allowed and value == 0)) or not math.isfinite(seconds) or seconds > threading.TIMEOUT_MAX:
        low = ">= 0" if zero_allowed else "> 0"
        raise UserError(f"{option} {value:g}: must be a number of {unit} {low} and at most {longest:.4g}")


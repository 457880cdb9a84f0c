"""Registries whose entries are imported on first use.

An entry names its object as "module:attribute". Names (membership, listing, `sorted(...)`) need
no import, so validating a study, planning it and rebuilding its tables load no PyTorch (about
1.3 s, 2.5 s with torchvision on the project's machines); the first lookup of a name imports its
module.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any


def import_object(path: str) -> Any:
    """The object named "package.module:attribute"."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


class LazyRegistry(Mapping[str, Any]):
    """A read-only dict of name -> object, each object imported from its "module:attribute" on first lookup."""

    def __init__(self, entries: dict[str, str]):
        self._paths = dict(entries)
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            self._loaded[name] = import_object(self._paths[name])  # an unknown name: KeyError, as a dict
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, name: str) -> str:
        """Where the entry lives ("module:attribute"), without importing it."""
        return self._paths[name]

    def __repr__(self) -> str:
        return f"LazyRegistry({self._paths!r})"

"""A heavy module imported at its first use, for modules that every command line loads.

`automerge --help` registers every command, so it imports each command's module; one that says
``import torch`` at the top makes every command pay seconds before it can print anything. Such a
module says instead::

    if TYPE_CHECKING:
        import torch
    else:
        torch = LazyModule("torch")   # imported when a function first touches torch.<attr>

and its functions use ``torch.<attr>`` as before, with no per-function import to forget.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for module `name`: an attribute read imports it (once; then a sys.modules lookup)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<LazyModule {self._name!r}>"

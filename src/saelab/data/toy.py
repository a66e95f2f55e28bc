"""Deprecated location of :class:`saelab.toy.ToySource` (moved to ``saelab.toy.source`` so that
data sources do not depend on the toy benchmark). Kept as a lazy alias for old imports."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "ToySource":
        warnings.warn("saelab.data.toy.ToySource moved to saelab.toy.ToySource",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module("saelab.toy.source").ToySource
    raise AttributeError(name)

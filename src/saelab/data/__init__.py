"""Activation sources the trainer reads from."""

from saelab.data.arrays import ArrayFileSource, IteratorSource, open_array
from saelab.data.base import ActivationSource, DataError, check_finite

__all__ = ["ActivationSource", "ArrayFileSource", "DataError", "IteratorSource", "check_finite",
           "open_array"]

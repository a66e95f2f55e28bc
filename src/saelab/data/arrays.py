"""Activations from array files (.npy, .safetensors; memory-mapped) and Python iterators."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelab.data.base import DataError, batch_schedule, warn_about_outliers
from saelab.data.fingerprint import file_fingerprint
from saelab.integrity import safetensors_header

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None}


def open_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """Memory-map a 2-D activation array from .npy or .safetensors (no full read)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"activation file {path} does not exist")
    if path.suffix == ".npy":
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty (0 bytes); it was not written completely — "
                            "recreate it")
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{path} is not a readable .npy file ({err})") from err
    elif path.suffix == ".safetensors":
        arr = _mmap_safetensors(path, key)
    else:
        raise DataError(f"{path}: unsupported activation file type {path.suffix!r}; use .npy or "
                        ".safetensors (or an activation cache folder)")
    if np.iscomplexobj(arr):
        raise DataError(f"{path} holds complex values ({arr.dtype}); SAEs train on real "
                        "activations: save the real part, or real and imaginary parts as columns")
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path} holds {arr.dtype} values; activations must be numbers")
    if arr.ndim != 2:
        raise DataError(f"{path}: activations must be a 2-D array (rows × width), got shape "
                        f"{arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{path} holds no rows")
    return arr


def _mmap_safetensors(path: Path, key: str | None) -> np.ndarray:
    # The format is an 8-byte header length, a JSON header, then raw little-endian data, so a
    # tensor can be memory-mapped directly at its offsets.
    try:
        header, data_start = safetensors_header(path)
    except ValueError as err:
        raise DataError(str(err)) from err
    names = [k for k in header if k != "__metadata__"]
    if key is None:
        if len(names) != 1:
            raise DataError(f"{path} holds tensors {names}; say which one with key=...")
        key = names[0]
    if key not in header:
        raise DataError(f"{path} has no tensor {key!r}; it holds {names}")
    info = header[key]
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise DataError(f"{path}: dtype {info['dtype']} is not supported for memory-mapping; "
                        "save activations as F32 or F16")
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if end - start != expected:
        raise DataError(f"{path}: tensor {key!r} size does not match its shape; file is corrupt")
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + start, shape=shape)


def scan_for_nonfinite(arr: np.ndarray, where: str, chunk_rows: int = 65536) -> np.ndarray:
    """Check every row once, in chunks, and fail before training if any value is NaN/inf.

    Returns every row's L2 norm (float64, so 1e30-sized rows do not overflow), which the
    caller uses to warn about extreme outliers."""
    norms = np.empty(arr.shape[0], dtype=np.float64)
    for start in range(0, arr.shape[0], chunk_rows):
        block = np.asarray(arr[start:start + chunk_rows])
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise DataError(
                f"{where}: NaN/infinite value at row {start + int(bad[0])}, column {int(bad[1])}; "
                "clean the activations (or filter those rows) before training"
            )
        norms[start:start + block.shape[0]] = np.linalg.norm(block.astype(np.float64), axis=1)
    return norms


class ArrayFileSource:
    """Rows of a memory-mapped array, reshuffled every epoch with a seeded permutation.

    Batch i of the stream is a pure function of (seed, i), so training resumes exactly.
    """

    def __init__(self, path: str | Path, *, seed: int = 0, shuffle: bool = True,
                 key: str | None = None, check: bool = True) -> None:
        self.path = Path(path)
        self.key = key
        self.array = open_array(self.path, key)
        self.seed = seed
        self.shuffle = shuffle
        if check:
            warn_about_outliers(scan_for_nonfinite(self.array, str(self.path)), str(self.path))

    @property
    def d_in(self) -> int:
        return int(self.array.shape[1])

    def fingerprint(self) -> dict[str, Any]:
        """Size and (sampled) hash of the file, plus the tensor key (see data.fingerprint)."""
        return {**file_fingerprint(self.path), "key": self.key or ""}

    @property
    def n_rows(self) -> int:
        return int(self.array.shape[0])

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]:
        if batch_size > self.n_rows:
            raise DataError(f"{self.path} has {self.n_rows} rows, fewer than one batch "
                            f"({batch_size}); lower the batch size or use more data")
        order_epoch, order = -1, np.empty(0, dtype=np.int64)
        for epoch, lo, hi in batch_schedule(self.n_rows, batch_size, start_batch):
            if epoch != order_epoch:
                order_epoch, order = epoch, self._epoch_order(epoch)
            rows = np.sort(order[lo:hi])  # sorted: faster memory-mapped reads
            yield torch.from_numpy(np.ascontiguousarray(self.array[rows], dtype=np.float32))

    def sample(self, n: int) -> Tensor:
        n = min(n, self.n_rows)
        rows = np.sort(np.random.default_rng([self.seed, 10**9]).choice(self.n_rows, n, replace=False))
        return torch.from_numpy(np.ascontiguousarray(self.array[rows], dtype=np.float32))


class IteratorSource:
    """Batches from a Python iterable of (rows × width) tensors or arrays, re-batched.

    Pass a zero-argument factory to make resume exact: on resume the factory is called again and
    the batches already trained on are skipped, which reproduces the stream when the factory is
    deterministic.
    """

    def __init__(self, factory: Callable[[], Iterable[Tensor | np.ndarray]], d_in: int) -> None:
        self.factory = factory
        self._d_in = d_in

    @property
    def d_in(self) -> int:
        return self._d_in

    def _rows(self) -> Iterator[Tensor]:
        for i, item in enumerate(self.factory()):
            if (torch.is_tensor(item) and item.is_complex()) or np.iscomplexobj(item):
                raise DataError(f"iterator item {i} holds complex values; SAEs train on real "
                                "activations")
            t = torch.as_tensor(item, dtype=torch.float32)
            if t.ndim != 2 or t.shape[1] != self._d_in:
                raise DataError(f"iterator item {i} has shape {tuple(t.shape)}, expected "
                                f"(rows, {self._d_in})")
            yield t

    def batches(self, batch_size: int, start_batch: int = 0) -> Iterator[Tensor]:
        buf: list[Tensor] = []
        have = 0
        index = 0
        for t in self._rows():
            buf.append(t)
            have += t.shape[0]
            while have >= batch_size:
                cat = torch.cat(buf)
                batch, rest = cat[:batch_size], cat[batch_size:]
                buf, have = [rest], rest.shape[0]
                if index >= start_batch:
                    yield batch
                index += 1

    def sample(self, n: int) -> Tensor:
        rows: list[Tensor] = []
        have = 0
        for t in self._rows():
            rows.append(t)
            have += t.shape[0]
            if have >= n:
                break
        if not rows:
            raise DataError("the activation iterator yielded nothing")
        return torch.cat(rows)[:n]

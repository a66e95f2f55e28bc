"""Sparse latent codes: a CSR batch of (latent id, value) pairs, optionally with fixed k per row."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(eq=False)
class SparseCodes:
    """A batch of sparse latent activations in CSR layout.

    Row ``b`` owns entries ``offsets[b]:offsets[b+1]`` of ``values`` / ``indices``. When ``k``
    is set every row has exactly ``k`` entries (the TopK fast form) and ``values_BK`` /
    ``indices_BK`` are free views. Entries may hold a value of 0 (a kept latent whose ReLU
    zeroed it); such entries count as "not fired". Within a row, indices are unordered.
    ``values`` may carry autograd history; ``indices`` and ``offsets`` never do.
    """

    values: Tensor  # (nnz,) float
    indices: Tensor  # (nnz,) int64 latent ids
    offsets: Tensor  # (B+1,) int64 row starts, offsets[-1] == nnz
    n_latents: int
    k: int | None = None

    def __post_init__(self) -> None:
        if self.values.dim() != 1 or self.indices.shape != self.values.shape:
            raise ValueError("values and indices must be 1-D tensors of equal length")
        if self.offsets.dim() != 1 or self.offsets.numel() < 1:
            raise ValueError("offsets must be a 1-D tensor of length B+1")
        if self.k is not None and self.values.numel() != self.k * self.n_rows:
            raise ValueError(f"fixed-k codes need nnz == B*k, got {self.values.numel()}")

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_fixed_k(cls, values_BK: Tensor, indices_BK: Tensor, n_latents: int) -> SparseCodes:
        """Wrap a TopK result (each row has exactly K entries)."""
        B, K = values_BK.shape
        offsets = torch.arange(B + 1, device=values_BK.device) * K
        return cls(values_BK.reshape(-1), indices_BK.reshape(-1).long(), offsets, n_latents, K)

    @classmethod
    def from_rows(
        cls, rows_N: Tensor, indices_N: Tensor, values_N: Tensor, n_rows: int, n_latents: int
    ) -> SparseCodes:
        """Build CSR codes from entries that are already grouped by ascending row id."""
        counts_B = torch.bincount(rows_N, minlength=n_rows)
        offsets = torch.zeros(n_rows + 1, dtype=torch.long, device=rows_N.device)
        torch.cumsum(counts_B, 0, out=offsets[1:])
        return cls(values_N, indices_N.long(), offsets, n_latents)

    @classmethod
    def from_dense(cls, dense_BM: Tensor) -> SparseCodes:
        """Keep the nonzero entries of a dense (B, M) code matrix (differentiable in values)."""
        rows_N, cols_N = dense_BM.nonzero(as_tuple=True)
        return cls.from_rows(rows_N, cols_N, dense_BM[rows_N, cols_N], *dense_BM.shape)

    # ----- shape helpers --------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return self.offsets.numel() - 1

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def values_BK(self) -> Tensor:
        """(B, K) view of the values; only for fixed-k codes."""
        return self.values.view(self.n_rows, self._fixed_k())

    @property
    def indices_BK(self) -> Tensor:
        """(B, K) view of the latent ids; only for fixed-k codes."""
        return self.indices.view(self.n_rows, self._fixed_k())

    def _fixed_k(self) -> int:
        if self.k is None:
            raise ValueError("these codes have a variable number of entries per row")
        return self.k

    def row_ids(self) -> Tensor:
        """(nnz,) int64: the row each entry belongs to."""
        rows_B = torch.arange(self.n_rows, device=self.offsets.device)
        if self.k is not None:
            return rows_B.repeat_interleave(self.k)
        return rows_B.repeat_interleave(self.offsets.diff(), output_size=self.nnz)

    # ----- derived quantities ---------------------------------------------------------------
    def to_dense(self) -> Tensor:
        """(B, M) dense codes; differentiable with respect to ``values``."""
        dense_BM = self.values.new_zeros(self.n_rows, self.n_latents)
        return dense_BM.index_put((self.row_ids(), self.indices), self.values, accumulate=True)

    def l0_per_row(self) -> Tensor:
        """(B,) int64: number of nonzero entries in each row."""
        fired_N = self.values.detach() != 0
        return torch.bincount(self.row_ids()[fired_N], minlength=self.n_rows)

    def fired_counts(self) -> Tensor:
        """(M,) int64: how many rows each latent fired (was nonzero) in."""
        fired_N = self.values.detach() != 0
        return torch.bincount(self.indices[fired_N], minlength=self.n_latents)

    def fired_mask(self) -> Tensor:
        """(M,) bool: latents that fired (nonzero) anywhere in the batch."""
        return self.fired_counts() > 0

    # ----- transforms -----------------------------------------------------------------------
    def with_values(self, values: Tensor) -> SparseCodes:
        """Same sparsity pattern, new values (e.g. after a nonlinearity)."""
        return SparseCodes(values, self.indices, self.offsets, self.n_latents, self.k)

    def detach(self) -> SparseCodes:
        return self.with_values(self.values.detach())

    def filter(self, keep_N: Tensor) -> SparseCodes:
        """Keep only the entries where ``keep_N`` is True (rows stay, counts become variable)."""
        rows_N = self.row_ids()[keep_N]
        return SparseCodes.from_rows(
            rows_N, self.indices[keep_N], self.values[keep_N], self.n_rows, self.n_latents
        )

    def sorted_by_latent(self) -> SparseCodes:
        """Same codes with each row's entries in ascending latent order (e.g. for nested losses)."""
        if self.k is not None:
            idx_BK, perm_BK = self.indices_BK.sort(dim=1)
            vals_BK = self.values_BK.gather(1, perm_BK)
            return SparseCodes.from_fixed_k(vals_BK, idx_BK, self.n_latents)
        key_N = self.row_ids() * self.n_latents + self.indices
        order_N = torch.argsort(key_N)
        return SparseCodes(
            self.values[order_N], self.indices[order_N], self.offsets, self.n_latents
        )

    def latent_range(self, start: int, stop: int) -> SparseCodes:
        """Entries whose latent id lies in [start, stop) (ids are kept, not shifted)."""
        return self.filter((self.indices >= start) & (self.indices < stop))

"""The feature build's vectorised passes against plain brute forces: the sparse codes of a TopK
SAE, the codes of long windows over contexts split between chunks, and the packed sorts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.features import examples
from saelab.features.build import sparse_entries
from saelab.features.collect import CodesFile, stable_argsort
from saelab.features.examples import Windows, window_codes
from saelab.registry import build, config_from_dict


class _Quiet:
    def progress(self, *args: object, **kwargs: object) -> None:
        pass


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_sparse_entries_equal_the_dense_codes(architecture: str) -> None:
    """A TopK SAE's entries come from its top-k without the dense code matrix; they must be
    the dense codes' nonzero entries, in the same order, with the same values, also where a
    kept pre-activation is not positive (the bias pushes many below zero)."""
    extra = {"k": 12} if architecture == "topk" else {}
    sae = build(config_from_dict({"architecture": architecture, "d_in": 16, "d_sae": 96,
                                  **extra}).resolved())
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-3.0, -0.5, 96))
    acts = np.random.default_rng(0).standard_normal((300, 16), dtype=np.float32)
    rows, latents, values = sparse_entries(sae, acts)
    with torch.no_grad():
        dense = sae.encode(torch.from_numpy(acts)).numpy()
    want_rows, want_latents = np.nonzero(dense > 0)
    assert 0 < len(rows) < (300 * 12 if architecture == "topk" else 300 * 96)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(latents, want_latents)
    np.testing.assert_array_equal(values, dense[want_rows, want_latents])


def test_window_codes_match_a_brute_force(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows longer than 64 tokens (several mask words), at context edges, over contexts
    with tokens that were never encoded, whose rows are shuffled and read in chunks far
    smaller than a context: every window gets exactly its latent's nonzero codes and a NaN at
    each token that has no row."""
    rng = np.random.default_rng(5)
    size, n_contexts, n_latents = 150, 9, 6
    seqpos = np.array([(s, p) for s in range(n_contexts) for p in range(size)])
    seqpos = seqpos[rng.random(len(seqpos)) > 0.07]  # ~7% of the tokens never encoded
    seqpos = seqpos[rng.permutation(len(seqpos))]  # a shuffled cache's row order
    dense = np.where(rng.random((len(seqpos), n_latents)) < 0.3,
                     rng.random((len(seqpos), n_latents)).astype(np.float32) + 0.1, 0)
    codes = CodesFile(tmp_path / "codes")
    nnz = 0
    for lo in range(0, len(seqpos), 100):
        r, lat = np.nonzero(dense[lo:lo + 100])
        codes.append(r, lat, dense[lo:lo + 100][r, lat], len(seqpos[lo:lo + 100]),
                     seqpos[lo:lo + 100], nnz)
        nnz += len(r)
    n_win = 40
    seq = rng.integers(0, n_contexts, n_win)
    start = rng.integers(0, size, n_win)
    start[:4] = [0, size - 1, size - 70, 3]  # edges and a window reaching the context's end
    length = np.minimum(rng.integers(1, 140, n_win), size - start)
    length[:4] = [size, 1, 70, 130]
    win = Windows(latent=rng.integers(0, n_latents, n_win), kind=np.zeros(n_win, np.int64),
                  bin=np.zeros(n_win, np.int64), seq=seq, pos=start,
                  value=np.zeros(n_win, np.float32), start=start, length=length)
    row_of = {(int(s), int(p)): i for i, (s, p) in enumerate(seqpos)}
    want = []
    for w in range(n_win):
        for off in range(int(length[w])):
            row = row_of.get((int(seq[w]), int(start[w]) + off))
            if row is None:
                want.append((w, off, np.nan))
            elif dense[row, win.latent[w]] > 0:
                want.append((w, off, float(dense[row, win.latent[w]])))
    monkeypatch.setattr(examples, "CHUNK_ROWS", 61)
    window, offset, code = window_codes(codes, win, n_latents, size, _Quiet())
    got = list(zip(window.tolist(), offset.tolist(), code.tolist(), strict=True))
    assert len(got) == len(want)
    for (w, o, c), (w2, o2, c2) in zip(got, want, strict=True):
        assert (w, o) == (w2, o2)
        assert (np.isnan(c) and np.isnan(c2)) or c == pytest.approx(c2, rel=1e-6)


@pytest.mark.parametrize("high", [50, 2**40, 2**62])
def test_stable_argsort_is_numpys_stable_argsort(high: int) -> None:
    """Packed (key, index) sorts where they fit, numpy's own stable sort where they do not;
    equal keys keep their order either way."""
    keys = np.random.default_rng(1).integers(0, high, 5000)
    np.testing.assert_array_equal(stable_argsort(keys), np.argsort(keys, kind="stable"))
    assert len(stable_argsort(keys[:0])) == 0

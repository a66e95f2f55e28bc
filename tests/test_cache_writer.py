"""The cache writer: every row exactly once, uniformly shuffled, checksummed, safe folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saelab.cache import CacheError, CacheSource, CacheWriter, WriterSettings, read_manifest

WIDTH = 512  # 2 KB rows: a 16 MB budget gives 4096-row buckets, so small tests get many buckets
CONTEXT = 16


def synthetic_batches(n_batches: int, contexts: int = 8, seed: int = 0):
    """Batches whose rows encode their own (sequence, position) in columns 0 and 1."""
    rng = np.random.default_rng(seed)
    for b in range(n_batches):
        positions = np.array([(s, p) for s in range(contexts) for p in range(1, CONTEXT)])
        acts = rng.standard_normal((len(positions), WIDTH)).astype(np.float32)
        acts[:, 0] = positions[:, 0] + b * contexts
        acts[:, 1] = positions[:, 1]
        tokens = rng.integers(5, 100, (contexts, CONTEXT))
        yield acts, positions, tokens


def write_cache(folder: Path, n_batches: int, **overrides) -> CacheWriter:
    settings = WriterSettings(width=WIDTH, max_rows=n_batches * 8 * CONTEXT, context_size=CONTEXT,
                              memory_limit_mb=16, meta={"model": "synthetic", "hook": "h"},
                              **overrides)
    writer = CacheWriter(folder, settings)
    for number, (acts, index, tokens) in enumerate(synthetic_batches(n_batches)):
        writer.add_batch(number, acts, index, tokens)
    writer.finish()
    return writer


def all_rows(source: CacheSource) -> tuple[np.ndarray, np.ndarray]:
    return source.read_rows(0, source.n_rows), source.positions(np.arange(source.n_rows))


def test_every_row_once_with_its_position_and_tokens(tmp_path: Path) -> None:
    write_cache(tmp_path / "c", n_batches=170)  # 20,400 rows (max 21,760) in 6 buckets
    source = CacheSource(tmp_path / "c")
    manifest = read_manifest(tmp_path / "c")
    assert len(manifest.shards) == 6 and manifest.n_rows == 170 * 8 * 15 == source.n_rows
    acts, index = all_rows(source)
    assert np.array_equal(acts[:, :2], index.astype(np.float32))  # each row kept its index
    keys = index[:, 0] * CONTEXT + index[:, 1]
    assert len(np.unique(keys)) == len(keys)
    expected = {s * CONTEXT + p for s in range(170 * 8) for p in range(1, CONTEXT)}
    assert set(keys.tolist()) == expected
    tokens = source.tokens
    assert tokens.shape == (170 * 8, CONTEXT) and tokens.dtype == np.int32
    first_tokens = next(synthetic_batches(1))[2]
    assert np.array_equal(tokens[:8], first_tokens)


def test_order_is_a_uniform_shuffle_across_the_whole_cache(tmp_path: Path) -> None:
    write_cache(tmp_path / "c", n_batches=170)
    acts, _ = all_rows(CacheSource(tmp_path / "c"))
    arrival = acts[:, 0] * CONTEXT + acts[:, 1]  # increasing in arrival order
    rank = np.argsort(np.argsort(arrival))
    n = len(rank)
    assert abs(np.corrcoef(rank, np.arange(n))[0, 1]) < 0.03
    # every tenth of the cache draws evenly from every tenth of the arrival order
    counts = np.histogram2d(np.arange(n) * 10 // n, rank * 10 // n, bins=10)[0]
    expected = n / 100
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 150, chi2  # 81 dof: mean 81, 150 is far in the tail


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    settings = WriterSettings(width=WIDTH, max_rows=1000, context_size=CONTEXT, memory_limit_mb=16)
    writer = CacheWriter(tmp_path / "c", settings, commit_every_s=0)
    acts, index, tokens = next(synthetic_batches(1))
    writer.add_batch(0, acts, index, tokens)
    with pytest.raises(CacheError, match=r"other settings \(differs in \['seed'\]\)"):
        CacheWriter(tmp_path / "c", WriterSettings(**{**settings.__dict__, "seed": 1}))
    with pytest.raises(CacheError, match="expects batch 1 next"):
        CacheWriter(tmp_path / "c", settings).add_batch(0, acts, index, tokens)


def test_foreign_folder_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    settings = WriterSettings(width=WIDTH, max_rows=1000, context_size=CONTEXT)
    with pytest.raises(CacheError, match="not empty and holds no saelab cache"):
        CacheWriter(tmp_path / "mine", settings)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_bad_batches_are_rejected(tmp_path: Path) -> None:
    settings = WriterSettings(width=WIDTH, max_rows=100, context_size=CONTEXT, memory_limit_mb=16)
    writer = CacheWriter(tmp_path / "c", settings)
    acts, index, tokens = next(synthetic_batches(1))
    with pytest.raises(CacheError, match="width 512"):
        writer.add_batch(0, acts[:, :10], index, tokens)
    bad = acts.copy()
    bad[3, 7] = np.nan
    with pytest.raises(CacheError, match="NaN"):
        writer.add_batch(0, bad[:50], index[:50], tokens)
    with pytest.raises(CacheError, match="past max_rows=100"):
        writer.add_batch(0, acts, index, tokens)


def test_finished_cache_is_not_rebuilt(tmp_path: Path) -> None:
    writer = write_cache(tmp_path / "c", n_batches=3)
    mtime = (tmp_path / "c" / "manifest.json").stat().st_mtime_ns
    again = CacheWriter(tmp_path / "c", writer.settings)
    assert again.complete and again.finish().n_rows == 3 * 8 * 15
    assert (tmp_path / "c" / "manifest.json").stat().st_mtime_ns == mtime


def test_corrupt_shard_is_named_before_use(tmp_path: Path) -> None:
    write_cache(tmp_path / "c", n_batches=80)
    shard = tmp_path / "c" / "acts_00001.npy"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"failed the sha256 check: acts_00001\.npy;"):
        CacheSource(tmp_path / "c")
    CacheSource(tmp_path / "c", verify=False)  # the user can opt out
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CacheError, match=r"acts_00001\.npy"):
        CacheSource(tmp_path / "c", verify=False)  # shape checks run even without hashing


def test_source_batches_are_deterministic_and_resume_exactly(tmp_path: Path) -> None:
    write_cache(tmp_path / "c", n_batches=10)  # 1,200 rows
    source = CacheSource(tmp_path / "c", seed=3)
    per_epoch = 1200 // 256
    stream = source.batches(256)
    first = [next(stream) for _ in range(3 * per_epoch)]
    resumed = source.batches(256, start_batch=per_epoch + 2)
    for i in range(per_epoch + 2, 3 * per_epoch):
        assert torch.equal(next(resumed), first[i])
    stored = torch.from_numpy(source.read_rows(0, per_epoch * 256))
    assert torch.equal(torch.cat(first[:per_epoch]), stored)  # epoch 0: stored order
    epoch1 = torch.cat(first[per_epoch:2 * per_epoch])
    keys = (epoch1[:, 0] * CONTEXT + epoch1[:, 1]).long()
    assert len(set(keys.tolist())) == len(keys)  # later epochs: no row twice
    assert not torch.equal(epoch1, stored)
    assert torch.equal(source.sample(100), stored[:100])


def test_writer_random_streams_are_independent() -> None:
    from saelab.cache.writer import bucket_rng, permutation_rng

    def head(gen: np.random.Generator) -> tuple[int, ...]:
        return tuple(gen.integers(0, 2**62, size=4).tolist())

    for seed in (0, 3):
        streams = [head(bucket_rng(seed, b)) for b in range(6)]
        streams += [head(permutation_rng(seed, b)) for b in range(6)]
        # [s, 1, 0] and [s, 1] seed one stream: bucket 0's permutation reused batch 1's ids
        assert len(set(streams)) == len(streams)


def test_manifest_file_names_stay_inside_the_cache(tmp_path: Path) -> None:
    import json

    write_cache(tmp_path / "c", n_batches=2)
    path = tmp_path / "c" / "manifest.json"
    doc = json.loads(path.read_text())
    (tmp_path / "secret.npy").write_bytes(b"x")
    for bad in ["../secret.npy", "/etc/passwd", "sub/../../secret.npy"]:
        doc["shards"][0]["acts_file"] = bad
        path.write_text(json.dumps(doc))
        with pytest.raises(CacheError, match="outside the cache folder"):
            read_manifest(tmp_path / "c")

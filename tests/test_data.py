import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from saelab.data import ArrayFileSource, DataError, IteratorSource


def test_npy_and_safetensors_give_the_same_stream(tmp_path):
    arr = np.random.default_rng(0).standard_normal((1000, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    save_file({"acts": arr}, str(tmp_path / "a.safetensors"))
    a = ArrayFileSource(tmp_path / "a.npy", seed=3)
    b = ArrayFileSource(tmp_path / "a.safetensors", seed=3)
    assert isinstance(a.array, np.memmap) and isinstance(b.array, np.memmap)
    for x, y in zip(a.batches(100), b.batches(100), strict=False):
        assert torch.equal(x, y)
        break


def test_batches_cover_each_row_once_per_epoch_and_resume(tmp_path):
    arr = np.arange(1000 * 2, dtype=np.float32).reshape(1000, 2)
    np.save(tmp_path / "a.npy", arr)
    src = ArrayFileSource(tmp_path / "a.npy", seed=1)
    it = src.batches(100)
    epoch = torch.cat([next(it) for _ in range(10)])
    assert sorted(epoch[:, 0].tolist()) == sorted(arr[:, 0].tolist())
    later = [next(it) for _ in range(5)]  # epoch 2 uses a new order
    resumed = list(zip(range(5), src.batches(100, start_batch=10), strict=False))
    for (_, r), b in zip(resumed, later, strict=True):
        assert torch.equal(r, b)
    assert not torch.equal(later[0], epoch[:100])


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ArrayFileSource(tmp_path / "none.npy")
    np.save(tmp_path / "three.npy", np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(DataError, match="2-D"):
        ArrayFileSource(tmp_path / "three.npy")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported"):
        ArrayFileSource(tmp_path / "x.csv")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{{{{{")
    with pytest.raises(DataError, match="not a safetensors file"):
        ArrayFileSource(tmp_path / "junk.safetensors")
    save_file({"a": np.zeros((4, 2), np.float32), "b": np.zeros((4, 2), np.float32)},
              str(tmp_path / "two.safetensors"))
    with pytest.raises(DataError, match="say which one"):
        ArrayFileSource(tmp_path / "two.safetensors")
    np.save(tmp_path / "small.npy", np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(DataError, match="fewer than one batch"):
        next(ArrayFileSource(tmp_path / "small.npy").batches(64))


def test_iterator_source_rebatches_and_resumes():
    def factory():
        g = torch.Generator().manual_seed(0)
        for _ in range(10):
            yield torch.randn(37, 4, generator=g)

    src = IteratorSource(factory, d_in=4)
    full = list(src.batches(50))
    assert len(full) == 370 // 50 and all(b.shape == (50, 4) for b in full)
    resumed = list(src.batches(50, start_batch=3))
    assert all(torch.equal(a, b) for a, b in zip(full[3:], resumed, strict=True))
    bad = IteratorSource(lambda: iter([torch.zeros(3, 5)]), d_in=4)
    with pytest.raises(DataError, match=r"shape \(3, 5\), expected \(rows, 4\)"):
        next(bad.batches(2))


def test_complex_iterator_items_are_refused():
    import numpy as np
    import pytest

    from saelab.data import DataError, IteratorSource

    source = IteratorSource(lambda: [np.ones((10, 4), dtype=np.complex64)], 4)
    with pytest.raises(DataError, match="complex values"):
        next(source.batches(5))

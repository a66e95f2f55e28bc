"""Nothing a user made is lost or silently wrong: concurrent runs on one folder, a flipped byte
in every checkpoint and saved-SAE file, and operating-system errors (read-only folder, --out that
is a file, a full disk). Each case asserts one clear error line and that earlier results are
intact.

A full disk and a read-only folder are real file systems: a small tmpfs mounted for the test
(remounted read-only for the read-only case). That needs root; without it the read-only case
uses chmod, and the disk-full case wraps saelab's tensor writer to raise ENOSPC once the folder
exceeds the limit (so on such machines it tests the handling, not the kernel's error).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saelab.cli import main
from saelab.data import ArrayFileSource
from saelab.integrity import CHECKSUMS, CheckpointError
from saelab.io import load
from saelab.lock import LOCK_NAME, folder_lock
from saelab.registry import config_from_dict
from saelab.training import TrainConfig, Trainer

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def make_acts(path: Path, n: int = 1024, d: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    codes = (rng.random((n, 48)) < 0.1) * rng.random((n, 48))
    np.save(path, (codes @ rng.standard_normal((48, d)) + 0.3).astype(np.float32))
    return path


def train_args(data: Path, out: Path | str, *extra: str, steps: int = 20, d_sae: int = 64) -> list[str]:
    return ["train", "--data", str(data), "--arch", "topk", "--k", "4", "--d-sae", str(d_sae),
            "--total-tokens", str(64 * steps), "--batch-size", "64", "--checkpoint-every", "5",
            "--log-every", "5", "--init-samples", "256", "--dead-after-tokens", "640",
            "--lr-warmup-steps", "2", "--no-progress", "--no-measure-peak", "--out", str(out),
            *extra]


def error_line(err: str, command: str = "train") -> str:
    """The single error line of a failed command; fails on tracebacks or several errors."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"saelab {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae.safetensors"))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------- file systems

def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_fs(path: Path, size_kb: int) -> Iterator[Path]:
    """A real tmpfs of ``size_kb`` at ``path`` (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)):
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def _plain(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    yield path


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make the tmpfs at ``path`` read-only (root), or chmod the folder (others)."""
    if os.geteuid() == 0:
        assert _mount("-o", "remount,ro", str(path))
        try:
            yield
        finally:
            _mount("-o", "remount,rw", str(path))
    else:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)


# ---------------------------------------------------------------------------- concurrency

def test_second_train_on_the_same_folder_fails_naming_the_holder(tmp_path):
    data = make_acts(tmp_path / "acts.npy")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "saelab.cli", *train_args(data, out, steps=600),
           "--checkpoint-every", "100", "--seed", "7"]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out / LOCK_NAME
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, lock taken
    try:
        assert lock.read_text().strip() == str(first.pid)
        second = subprocess.run([sys.executable, "-m", "saelab.cli",
                                 *train_args(data, out, steps=600), "--checkpoint-every", "100",
                                 "--seed", "8"], env=ENV, capture_output=True, text=True)
        assert second.returncode == 2
        line = error_line(second.stderr)
        assert f"in use by another saelab process (pid {first.pid})" in line
    finally:
        os.kill(first.pid, signal.SIGKILL)  # a killed holder leaves a stale lock file behind
        first.wait()
    assert not (out / "final").exists()
    rerun = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr  # the stale lock is taken over
    assert json.loads((out / "run.json").read_text())["train"]["seed"] == 7
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats or interleaves steps"
    load(out / "final" / "topk")


def test_second_cache_build_on_the_same_folder_fails(tmp_path, capsys):
    pytest.importorskip("transformers")
    from saelab.models.tiny import build_tiny_gpt2
    from saelab.text import corpus_path

    model = build_tiny_gpt2(tmp_path / "gpt2", vocab_size=500)
    cache = tmp_path / "cache"
    args = ["cache", "--model", str(model), "--hook", "transformer.h.1", "--text",
            str(corpus_path()), "--out", str(cache), "--context-size", "16", "--max-tokens",
            "1024", "--memory-limit-mb", "16"]
    with folder_lock(cache, "test"):
        assert main(args) == 2
        assert f"(pid {os.getpid()})" in error_line(capsys.readouterr().err, "cache")
    assert main(args) == 0
    assert main(["cache", "--verify", str(cache)]) == 0


# ---------------------------------------------------------------------------- folders saelab does not own

def test_foreign_or_file_out_is_refused_and_left_untouched(tmp_path, capsys):
    data = make_acts(tmp_path / "acts.npy")
    foreign = tmp_path / "mine"
    (foreign / "final" / "topk").mkdir(parents=True)
    (foreign / "final" / "topk" / "sae.safetensors").write_bytes(b"the user's own SAE")
    (foreign / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = snapshot(foreign)
    assert main(train_args(data, foreign)) == 2
    assert "not empty" in error_line(capsys.readouterr().err)
    assert snapshot(foreign) == before

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert main(train_args(data, a_file)) == 2
    assert "is an existing file" in error_line(capsys.readouterr().err)
    assert a_file.read_text() == "keep me"

    assert main(train_args(data, "")) == 2
    assert "empty" in error_line(capsys.readouterr().err)


def test_rerun_keeps_user_files_and_ignores_cosmetic_differences(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    make_acts(tmp_path / "d" / "x.npy")
    assert main(train_args(Path("d/x.npy"), "run")) == 0
    sae_dir = tmp_path / "run" / "final" / "topk"
    weights = tensors(sae_dir)
    (sae_dir / "eval_model.json").write_text('{"user": "result"}')
    (sae_dir / "eval_model.density.png").write_bytes(b"png")
    # same run, spelled differently, with options that do not change the result
    assert main([*train_args(Path("./d/x.npy"), str(tmp_path / "run") + "/"), "--progress",
                 "--no-data-check-finite"]) == 0
    assert (sae_dir / "eval_model.json").read_text() == '{"user": "result"}'
    assert (sae_dir / "eval_model.density.png").read_bytes() == b"png"
    assert all(torch.equal(weights[k], v) for k, v in tensors(sae_dir).items())

    cfg_before = (sae_dir / "cfg.json").read_bytes()
    for target in ("cfg.json", "sae.safetensors"):
        assert main(["eval", str(sae_dir), "--data", "d/x.npy", "--out",
                     str(sae_dir / target)]) == 2
        assert "would overwrite the SAE's own" in error_line(capsys.readouterr().err, "eval")
    assert (sae_dir / "cfg.json").read_bytes() == cfg_before
    load(sae_dir)


def test_failed_first_run_does_not_block_the_corrected_command(tmp_path, capsys):
    data = make_acts(tmp_path / "acts.npy", n=100)
    out = tmp_path / "run"
    assert main([*train_args(data, out, steps=4)[:-2], "--batch-size", "128", "--out",
                 str(out)]) == 2
    assert "fewer than one batch" in error_line(capsys.readouterr().err)
    assert main([*train_args(data, out, steps=4), "--batch-size", "32", "--fresh"]) == 0


# ---------------------------------------------------------------------------- corruption

def _tiny_trainer(data: Path, out: Path, seed: int = 0) -> Trainer:
    cfg = {"topk": config_from_dict({"architecture": "topk", "k": 4, "d_sae": 64})}
    train = TrainConfig(total_tokens=64 * 20, batch_size=64, checkpoint_every=5, log_every=5,
                        init_samples=256, lr_warmup_steps=2, dead_after_tokens=640,
                        progress=False, measure_peak=False, seed=seed)
    return Trainer(cfg, train, ArrayFileSource(data), out)


def test_byte_flip_in_every_checkpoint_file_falls_back_to_the_previous(tmp_path):
    data = make_acts(tmp_path / "acts.npy")
    done = tmp_path / "done"
    _tiny_trainer(data, done).fit()
    expected = tensors(done / "final" / "topk")
    newest = done / "checkpoints" / "step_000000020"
    names = sorted(p.name for p in newest.iterdir())
    assert names == [CHECKSUMS, "rng.safetensors", "topk.optim.safetensors",
                     "topk.sae.safetensors", "topk.track.safetensors", "trainer.json"]
    for name in [*names, "trainer.json:input_scale", "trainer.json:step"]:
        run = tmp_path / f"flip_{name}"
        shutil.copytree(done, run)
        shutil.rmtree(run / "final")
        target = run / "checkpoints" / "step_000000020" / name.split(":")[0]
        if ":" in name:  # an edit that still parses
            meta = json.loads(target.read_text())
            meta[name.split(":")[1]] = meta[name.split(":")[1]] * 2
            target.write_text(json.dumps(meta))
        else:
            flip_byte(target)
        with pytest.warns(UserWarning, match=r"step_000000020.*(sha256|corrupt)") as caught:
            _tiny_trainer(data, run).fit()
        assert "\n" not in str(caught[0].message)
        assert (run / "checkpoints" / "corrupt_step_000000020").is_dir()  # kept, never resumed
        got = tensors(run / "final" / "topk")
        assert all(torch.equal(expected[k], got[k]) for k in expected), name

    both = tmp_path / "both"
    shutil.copytree(done, both)
    for step in ("step_000000015", "step_000000020"):
        flip_byte(both / "checkpoints" / step / "topk.sae.safetensors")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no checkpoint"):
        _tiny_trainer(data, both).fit()
    assert tensors(both / "final" / "topk").keys() == expected.keys()  # earlier result intact


def test_byte_flip_in_every_saved_sae_file_is_refused(tmp_path, capsys):
    data = make_acts(tmp_path / "acts.npy")
    done = tmp_path / "done"
    _tiny_trainer(data, done).fit()
    sae_dir = done / "final" / "topk"
    for name in ("cfg.json", "sae.safetensors", CHECKSUMS):
        copy = tmp_path / f"flip_{name}"
        shutil.copytree(sae_dir, copy)
        flip_byte(copy / name)
        with pytest.raises(CheckpointError) as err:
            load(copy)
        assert "\n" not in str(err.value)
        assert main(["eval", str(copy), "--data", str(data), "--no-plot"]) == 2
        error_line(capsys.readouterr().err, "eval")
        assert not (copy / "eval.json").exists()
    load(sae_dir)


def test_changed_data_is_refused_on_resume_unless_allowed(tmp_path, capsys):
    data = make_acts(tmp_path / "acts.npy")
    out = tmp_path / "run"
    assert main(train_args(data, out, steps=10)) == 0
    make_acts(data, seed=1)  # same shape, different rows
    assert main(train_args(data, out, steps=10)) == 2
    assert "data changed" in error_line(capsys.readouterr().err)
    assert main([*train_args(data, out, steps=10), "--allow-data-change"]) == 0


def test_bad_inputs_get_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    pickled = tmp_path / "p.safetensors"
    torch.save({"x": torch.zeros(4, 4)}, pickled)
    huge = tmp_path / "h.safetensors"
    huge.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    complex_file = tmp_path / "c.npy"
    np.save(complex_file, np.ones((300, 4), dtype=np.complex64))
    cases = {empty: "empty (0 bytes)", pickled: "not a safetensors file",
             huge: "not a safetensors file", complex_file: "complex values"}
    for path, message in cases.items():
        assert main(train_args(path, tmp_path / f"run_{path.stem}")) == 2
        assert message in error_line(capsys.readouterr().err)
    data = make_acts(tmp_path / "acts.npy")
    for flag, value, message in [("--log-every", "0", "log_every must be positive"),
                                 ("--init-samples", "0", "init_samples must be positive")]:
        assert main([*train_args(data, tmp_path / "r"), flag, value]) == 2
        assert message in error_line(capsys.readouterr().err)
    assert main(["train", "--data", str(data), "--arch", "topk", "--k-aux", "-1",
                 "--out", str(tmp_path / "r2")]) == 2
    assert "k_aux" in error_line(capsys.readouterr().err)
    assert main(["eval", str(tmp_path), "--data", str(data), "--batch-size", "0"]) == 2
    assert "batch_size must be positive" in error_line(capsys.readouterr().err, "eval")


def test_extreme_outlier_rows_are_reported(tmp_path):
    data = make_acts(tmp_path / "acts.npy")
    arr = np.load(data)
    arr[17] = 1e30
    np.save(data, arr)
    with pytest.warns(UserWarning, match=r"1 row\(s\) have norms over .*row 17: 4e\+30"):
        ArrayFileSource(data)


# ---------------------------------------------------------------------------- OS errors

def test_read_only_output_folder(tmp_path, capsys):
    data = make_acts(tmp_path / "acts.npy")
    with small_fs(tmp_path / "fs", 4096) if os.geteuid() == 0 else _plain(tmp_path / "fs") as fs:
        assert main(train_args(data, fs / "run", steps=10)) == 0
        sae_dir = fs / "run" / "final" / "topk"
        before = snapshot(fs / "run")
        with read_only(fs):
            assert main(train_args(data, fs / "other")) == 2
            line = error_line(capsys.readouterr().err)  # root: ro mount; others: chmod 555
            assert "read-only" in line or "permission denied" in line.lower()
            assert "--out" in line
            # eval of an SAE in a read-only folder: refused before computing, names the fix
            assert main(["eval", str(sae_dir), "--data", str(data), "--no-plot"]) == 2
            assert "pass --out" in error_line(capsys.readouterr().err, "eval")
            elsewhere = tmp_path / "results"
            elsewhere.mkdir()
            assert main(["eval", str(sae_dir), "--data", str(data), "--out", str(elsewhere)]) == 0
            assert json.loads((elsewhere / "eval.json").read_text())["metrics"]["l0"] <= 4
            assert (elsewhere / "eval.density.png").exists()
        assert snapshot(fs / "run") == before


@contextlib.contextmanager
def limited_disk(path: Path, size_kb: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """A folder where writes fail with ENOSPC after about ``size_kb``; yields a function that
    lifts the limit. As root: a real tmpfs of that size (grown by remounting). Otherwise the
    tensor writer is wrapped to raise ENOSPC once the folder holds more than the limit."""
    if os.geteuid() == 0:
        with small_fs(path, size_kb) as fs:
            yield lambda: assert_true(_mount("-o", "remount,size=8m", str(fs)))
        return
    import errno

    from saelab.integrity import save_tensors as real

    def limited(tensors: dict[str, torch.Tensor], target: Path) -> None:
        used = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if used + sum(t.numel() * t.element_size() for t in tensors.values()) > size_kb * 1024:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        real(tensors, target)

    path.mkdir(parents=True, exist_ok=True)
    for module in ("saelab.training.checkpoint", "saelab.io"):
        monkeypatch.setattr(f"{module}.save_tensors", limited)
    yield monkeypatch.undo


def assert_true(value: bool) -> None:
    assert value


def test_full_disk_keeps_the_run_resumable(tmp_path, capsys, monkeypatch):
    data = make_acts(tmp_path / "acts.npy")
    reference = tmp_path / "reference"
    assert main(train_args(data, reference, d_sae=512)) == 0
    with limited_disk(tmp_path / "fs", 512, monkeypatch) as lift_limit:
        run = tmp_path / "fs" / "run"
        assert main(train_args(data, run, d_sae=512)) == 2
        line = error_line(capsys.readouterr().err)
        assert "No space left on device" in line and "rerun the same command" in line
        ckpts = sorted((run / "checkpoints").glob("step_*"))
        assert ckpts, "no checkpoint was written before the disk filled"
        assert not list((run / "checkpoints").glob(".*.tmp"))  # the partial write is gone
        lift_limit()
        assert main(train_args(data, run, d_sae=512)) == 0
        a, b = tensors(reference / "final" / "topk"), tensors(run / "final" / "topk")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_housekeeping_temporaries_metrics_and_modes(tmp_path):
    data = make_acts(tmp_path / "acts.npy")
    out = tmp_path / "run"
    old_umask = os.umask(0o022)
    try:
        _tiny_trainer(data, out).fit()
        # as if killed after the step-15 checkpoint, having logged up to step 20
        shutil.rmtree(out / "checkpoints" / "step_000000020")
        shutil.rmtree(out / "final")
        leftovers = [out / "checkpoints" / ".step_000000020.k2j3.tmp",
                     out / "checkpoints" / ".step_000000010.old"]
        for path in leftovers:
            path.mkdir()
            (path / "topk.sae.safetensors").write_bytes(b"partial")
        (out / ".run.json.x8.tmp").write_text("{")
        _tiny_trainer(data, out).fit()
    finally:
        os.umask(old_umask)
    assert not any(p.exists() for p in leftovers) and not (out / ".run.json.x8.tmp").exists()
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 20
    for folder in [out / "final" / "topk", *(out / "checkpoints").glob("step_*")]:
        assert folder.stat().st_mode & 0o777 == 0o755, folder
        for f in folder.iterdir():
            assert f.stat().st_mode & 0o777 == 0o644, f


def test_non_finite_weights_are_never_a_good_checkpoint(tmp_path):
    from saelab.training import TrainingError
    from saelab.training.checkpoint import list_checkpoints, write_checkpoint

    data = make_acts(tmp_path / "acts.npy")
    out = tmp_path / "run"
    trainer = _tiny_trainer(data, out)
    trainer.fit()
    good = list_checkpoints(out / "checkpoints")
    with torch.no_grad():
        trainer.saes["topk"].W_dec[3, 2] = float("nan")
    with pytest.raises(TrainingError, match=r"non-finite weights; not writing.*step_000000020"):
        trainer.checkpoint()
    assert list_checkpoints(out / "checkpoints") == good
    # a NaN checkpoint on disk (checksums valid) is skipped on resume like a corrupt one
    write_checkpoint(out / "checkpoints", 25, {"input_scale": trainer.scale, "tokens": 0},
                     trainer.saes, trainer.slots, keep=5)
    with pytest.warns(UserWarning, match=r"step_000000025 holds non-finite weights"):
        _tiny_trainer(data, out).fit()

"""Data-parallel and latent-sharded training on 2 gloo processes equal 1 process on the full
batch; a dying rank fails clearly and leaves a checkpoint from which the run resumes (on 1 or 2
ranks, sharded or not) to the uninterrupted result."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import dist_workers as W


def run_ranks(tmp: Path, tag: str, out: Path, data: Path, world: int = 2,
              **kw: Any) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    results = [tmp / f"{tag}.rank{r}.json" for r in range(world)]
    procs = [ctx.Process(target=W.data_parallel_worker,
                         args=(r, world, str(tmp / f"{tag}.rdzv"), str(out), str(data),
                               str(results[r])), kwargs=kw) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # generous: a busy machine is slow, and a real hang fails the gloo timeout
        if p.is_alive():
            p.kill()
            pytest.fail(f"{tag}: a rank hung")
    return [json.loads(f.read_text()) if f.exists() else {"exit": p.exitcode}
            for f, p in zip(results, procs, strict=True)]


def assert_same(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]
                ) -> None:
    assert set(a) == set(b)
    for arch in a:
        for key in a[arch]:
            torch.testing.assert_close(a[arch][key], b[arch][key], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, arch=arch, key=key: f"{arch}.{key}: {m}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("dist")
    data = W.make_data(tmp / "acts.npy")
    single = tmp / "single"
    W.trainer(single, data).fit()
    return tmp, data, W.final_weights(single)


@pytest.mark.slow
def test_two_gloo_ranks_train_the_same_weights_as_one_process(setup: tuple) -> None:
    tmp, data, reference = setup
    out = tmp / "dp2"
    assert run_ranks(tmp, "dp2", out, data) == [{"ok": True, "step": 12}] * 2
    got = W.final_weights(out)
    assert_same(got, reference)
    # The test can fail: the BatchTopK threshold and AuxK must have been exercised.
    assert float(reference["batchtopk"]["threshold"]) > 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("auxk" in r for r in log if r["sae"] == "topk"), "AuxK never ran"


@pytest.mark.slow
def test_dying_rank_fails_clearly_and_the_run_resumes_to_the_same_weights(setup: tuple) -> None:
    tmp, data, reference = setup
    out = tmp / "dying"
    res = run_ranks(tmp, "dying", out, data, die_rank=1, die_at=9)
    assert res[1] == {"exit": 3}
    err = res[0]["error"]
    assert "TrainingError" in err and "another rank died" in err and "step 10" in err
    assert "step_000000008" in err and "Rerun the same command" in err
    assert not (out / "final").exists()
    # Resume on 1 process from a copy, and on 2 ranks in place: both end where an uninterrupted
    # run ends.
    shutil.copytree(out, tmp / "resumed1")
    W.trainer(tmp / "resumed1", data).fit()
    assert_same(W.final_weights(tmp / "resumed1"), reference)
    assert run_ranks(tmp, "resume2", out, data) == [{"ok": True, "step": 12}] * 2
    assert_same(W.final_weights(out), reference)


TOPK = ("topk",)


@pytest.mark.slow
def test_latent_sharded_training_equals_unsharded_and_resumes_on_one_or_two_ranks(
        setup: tuple) -> None:
    """A 2-rank latent-sharded run killed at step 9 and resumed ends where one unsharded process
    ends, whether resumed sharded on 2 ranks or unsharded on 1: so the sharded steps before and
    after the checkpoint equal the unsharded ones, and the checkpoint carries the whole state."""
    from safetensors.torch import load_file

    tmp, data, reference = setup  # its topk SAE trained alone is the same (own seed, own Adam)
    want = {"topk": reference["topk"]}
    out = tmp / "sharded"
    res = run_ranks(tmp, "sharded_dying", out, data, die_rank=1, die_at=9, archs=TOPK,
                    shard_latents=True)
    assert res[1] == {"exit": 3}
    assert "another rank died" in res[0]["error"] and "step_000000008" in res[0]["error"]
    # the checkpoint holds the whole SAE and its Adam state, in the single-process format
    ckpt = out / "checkpoints" / "step_000000008"
    assert load_file(str(ckpt / "topk.sae.safetensors"))["W_enc"].shape == (W.D_IN, W.D_SAE)
    assert load_file(str(ckpt / "topk.optim.safetensors"))["2.exp_avg"].shape == (W.D_SAE, W.D_IN)
    shutil.copytree(out, tmp / "sharded_resumed1")  # 1 process, unsharded
    W.trainer(tmp / "sharded_resumed1", data, archs=TOPK).fit()
    assert_same(W.final_weights(tmp / "sharded_resumed1", TOPK), want)
    assert run_ranks(tmp, "sharded_resume2", out, data, archs=TOPK,
                     shard_latents=True) == [{"ok": True, "step": 12}] * 2
    assert_same(W.final_weights(out, TOPK), want)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("auxk" in r for r in log), "AuxK never ran"


def test_latent_sharding_refuses_what_it_cannot_split_exactly() -> None:
    from saelab.config import ConfigError
    from saelab.distributed.latent_sharded import check_shardable
    from saelab.registry import config_from_dict

    def cfg(name: str, **kw: Any) -> Any:
        return config_from_dict({**W.sae_options(name), **kw}).resolved(W.D_IN)

    check_shardable("ok", cfg("topk"), 2)
    with pytest.raises(ConfigError, match="only 'topk' SAEs"):
        check_shardable("b", cfg("batchtopk"), 2)
    with pytest.raises(ConfigError, match="multiple of 5"):
        check_shardable("t", cfg("topk"), 5)
    with pytest.raises(ConfigError, match="sparse_kernels"):
        check_shardable("t", cfg("topk", sparse_kernels=False), 2)

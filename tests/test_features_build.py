"""The feature store build: exact statistics and examples against a dense brute force, resume
after a kill, fingerprints, rebuilds that keep user rows, and a build straight from a model."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from saelab.cache import CacheSource
from saelab.features import (
    CacheRows,
    FeatureBuildConfig,
    FeatureStore,
    ModelRows,
    ModelSpec,
    StoreError,
    build_store,
    load_model,
)
from saelab.features.collect import TopPerGroup
from saelab.io import save
from saelab.models.hf import load_hf_model
from saelab.text.packing import TextConfig
from tests.feature_helpers import HOOK, TinySetup, make_setup, tiny_sae


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    return make_setup(tmp_path_factory.mktemp("features"))


def dense_reference(setup: TinySetup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's dense codes, (sequence, position) and the tokens, straight from the cache."""
    cache = CacheSource(setup.cache, shuffle=False)
    with torch.no_grad():
        codes = setup.sae.encode(torch.from_numpy(cache.read_rows(0, cache.n_rows))).numpy()
    return codes, cache.positions(np.arange(cache.n_rows)), np.asarray(cache.tokens)


def test_statistics_and_top_contexts_are_exact(setup: TinySetup) -> None:
    codes, seqpos, _ = dense_reference(setup)
    store = FeatureStore(setup.store_dir, setup.sae)
    n = codes.shape[0]
    for latent in range(setup.sae.cfg.d_sae):
        s = store.summary(latent)
        assert s is not None
        col = codes[:, latent]
        fired = col > 0
        assert s["n_fired"] == int(fired.sum())
        assert s["density"] == pytest.approx(fired.sum() / n)
        assert s["max_act"] == pytest.approx(float(col.max()), rel=1e-6)
        if fired.any():
            assert s["mean_act"] == pytest.approx(float(col[fired].mean()), rel=1e-5)
            assert sum(s["histogram"]["counts"]) == int(fired.sum())
        # top contexts: the best code of each context, best 20 contexts
        best: dict[int, float] = {}
        for row in np.nonzero(fired)[0]:
            seq = int(seqpos[row, 0])
            best[seq] = max(best.get(seq, 0.0), float(col[row]))
        want = sorted(best.values(), reverse=True)[:20]
        got = [e["value"] for e in store.examples(latent)["top"]]
        assert got == pytest.approx(want, rel=1e-6)


def test_windows_carry_the_codes_of_every_token(setup: TinySetup) -> None:
    codes, seqpos, tokens = dense_reference(setup)
    lookup = {(int(s), int(p)): r for r, (s, p) in enumerate(seqpos)}
    store = FeatureStore(setup.store_dir, setup.sae)
    checked = 0
    for latent in range(0, setup.sae.cfg.d_sae, 7):
        ex = store.examples(latent)
        for kind in ("top", "quantile", "random"):
            for e in ex[kind]:
                assert e["token_ids"] == tokens[e["sequence"], e["start"]:e["start"] + len(
                    e["token_ids"])].tolist()
                for i, act in enumerate(e["acts"]):
                    row = lookup.get((e["sequence"], e["start"] + i))
                    if row is None:
                        assert act is None or kind == "random"  # special token: not counted
                    else:
                        assert act == pytest.approx(float(codes[row, latent]), abs=1e-4)
                        checked += 1
                if kind == "random":
                    assert all(a in (0.0, None) for a in e["acts"])
                else:
                    assert e["acts"][e["centre"]] == pytest.approx(e["value"], abs=1e-4)
    assert checked > 1000


def test_quantile_samples_lie_in_their_bins(setup: TinySetup) -> None:
    store = FeatureStore(setup.store_dir, setup.sae)
    seen_bins = set()
    for latent in range(setup.sae.cfg.d_sae):
        s = store.summary(latent)
        assert s is not None
        edges = [0.0, *s["quantile_edges"], float("inf")]
        for e in store.examples(latent)["quantile"]:
            assert edges[e["bin"]] < e["value"] <= edges[e["bin"] + 1] + 1e-6
            seen_bins.add(e["bin"])
    assert seen_bins == set(range(10))


def test_top_per_group_keeps_one_entry_per_context() -> None:
    top = TopPerGroup(2, 2)
    top.offer(np.array([0, 0, 0, 1]), np.array([5.0, 4.0, 3.0, 1.0]), np.array([7, 7, 8, 1]),
              np.array([0, 1, 2, 3]), np.array([5, 4, 3, 1], dtype=np.float32))
    top.offer(np.array([0, 1]), np.array([6.0, 0.5]), np.array([7, 2]), np.array([9, 9]),
              np.array([6, 0.5], dtype=np.float32))
    assert top.entries(0) == [(7, 9, 6.0), (8, 2, 3.0)]
    assert top.entries(1) == [(1, 3, 1.0), (2, 9, 0.5)]


def test_logit_effects_follow_the_unembedding(setup: TinySetup) -> None:
    store = FeatureStore(setup.store_dir, setup.sae)
    model = load_hf_model(setup.model).model
    ln = model.transformer.ln_f
    d = setup.sae.W_dec[5].detach()
    effect = model.lm_head.weight.detach() @ ((d - d.mean()) * ln.weight.detach())
    got = store.logit_effects(5)
    assert [x["token_id"] for x in got["promoted"]] == effect.topk(10).indices.tolist()
    assert [x["token_id"] for x in got["suppressed"]] == (-effect).topk(10).indices.tolist()
    assert got["promoted"][0]["value"] == pytest.approx(float(effect.max()), rel=1e-4)


def test_neighbours_are_the_nearest_decoder_directions(setup: TinySetup) -> None:
    store = FeatureStore(setup.store_dir, setup.sae)
    W = torch.nn.functional.normalize(setup.sae.W_dec.detach(), dim=1)
    sims = W @ W[3]
    sims[3] = -2
    assert [x["latent"] for x in store.neighbours(3)] == sims.topk(10).indices.tolist()


def test_store_refuses_other_weights(setup: TinySetup, tmp_path: Path) -> None:
    other = tiny_sae(seed=1)
    with pytest.raises(StoreError, match="other SAE weights"):
        FeatureStore(setup.store_dir, other)
    stream = CacheRows(setup.cache)
    with pytest.raises(StoreError, match="other SAE weights"):
        build_store(other, stream, setup.store_dir, FeatureBuildConfig(), tokens=stream.tokens,
                    progress=False)


def _table(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_killed_build_resumes_to_the_same_store(setup: TinySetup, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in the middle of a batch (codes on disk ahead of the saved state), a rerun cuts
    the files back to the state and resumes to exactly the store an uninterrupted build makes."""
    from saelab.features import build as build_module

    class Killed(Exception):
        pass

    calls = [0]
    encode = build_module.sparse_entries

    def dies_on_the_tenth(sae, acts):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 10:  # the 2nd of four encodes of batch 3: one chunk already written
            raise Killed
        return encode(sae, acts)

    cfg = FeatureBuildConfig(checkpoint_every_s=0, board_games=0, batch_rows=256)
    stream = CacheRows(setup.cache, batch_rows=1024)
    monkeypatch.setattr(build_module, "sparse_entries", dies_on_the_tenth)
    with pytest.raises(Killed):
        build_store(setup.sae, stream, tmp_path / "a", cfg, tokens=stream.tokens,
                    progress=False)
    monkeypatch.setattr(build_module, "sparse_entries", encode)
    assert not (tmp_path / "a" / "features.db").exists()  # nothing half-written in place
    resumed = build_store(setup.sae, stream, tmp_path / "a", cfg, tokens=stream.tokens,
                          progress=False)
    assert resumed.resumed_at_batch == 2
    whole = build_store(setup.sae, stream, tmp_path / "b", cfg, tokens=stream.tokens,
                        progress=False)
    for sql in ("SELECT * FROM latents ORDER BY id",
                "SELECT * FROM examples ORDER BY latent, kind"):
        assert _table(resumed.path, sql) == _table(whole.path, sql)


def test_rebuild_keeps_labels_and_explanations(setup: TinySetup, tmp_path: Path) -> None:
    sae_dir = save(setup.sae, tmp_path / "sae")
    stream = CacheRows(setup.cache)
    cfg = FeatureBuildConfig(board_games=0)
    build_store(setup.sae, stream, sae_dir / "features", cfg, tokens=stream.tokens,
                progress=False)
    store = FeatureStore(sae_dir, setup.sae)
    store.add_label(4, "my label")
    conn = store._conn()
    conn.execute("INSERT INTO explanations (latent, text, method) VALUES (4, 'fires on x', 't')")
    conn.execute("INSERT INTO explanation_scores (explanation_id, scorer, metric, value) "
                 "VALUES (1, 'detection', 'balanced_accuracy', 0.8)")
    conn.commit()
    store.close()
    again = build_store(setup.sae, stream, sae_dir / "features", cfg, tokens=stream.tokens,
                        progress=False)
    assert again.skipped  # a finished store is kept as it is
    build_store(setup.sae, stream, sae_dir / "features", cfg, tokens=stream.tokens,
                rebuild=True, progress=False)
    store = FeatureStore(sae_dir, setup.sae)
    assert [lab["text"] for lab in store.labels(4)] == ["my label"]
    (expl,) = store.explanations(4)
    assert expl["text"] == "fires on x" and expl["scores"][0]["value"] == 0.8
    assert [r["id"] for r in store.search("fires on")] == [4]


def test_build_from_the_model_matches_the_cache(setup: TinySetup, tmp_path: Path) -> None:
    """--model/--hook/--text gives the same statistics and top contexts as the cache path."""
    spec = ModelSpec("hf", str(setup.model), HOOK)
    loaded = load_model(spec)
    cache = CacheSource(setup.cache)
    stream = ModelRows(loaded.model, loaded.codec.tokenizer,  # type: ignore[attr-defined]
                       [setup.root / "corpus.txt"], HOOK, TextConfig(context_size=48),
                       max_tokens=cache.manifest.n_contexts * 48)
    cfg = FeatureBuildConfig(board_games=0)
    result = build_store(setup.sae, stream, tmp_path / "m", cfg, spec=spec, loaded=loaded,
                         progress=False)
    assert result.n_rows == cache.n_rows
    direct, cached = FeatureStore(result.path, setup.sae), FeatureStore(setup.store_dir)
    for latent in range(0, setup.sae.cfg.d_sae, 5):
        a, b = direct.summary(latent), cached.summary(latent)
        assert a is not None and b is not None
        assert a["n_fired"] == b["n_fired"] and a["max_act"] == pytest.approx(b["max_act"])
        top_a = [(e["sequence"], e["position"]) for e in direct.examples(latent)["top"]]
        top_b = [(e["sequence"], e["position"]) for e in cached.examples(latent)["top"]]
        assert top_a == top_b
        assert direct.examples(latent)["top"][0]["tokens"] == \
            cached.examples(latent)["top"][0]["tokens"]


def test_cli_build_then_export(setup: TinySetup, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from saelab.cli import main
    from saelab.cli.features_cmd import parse_latents

    sae_dir = save(setup.sae, tmp_path / "sae")
    assert main(["features", "build", str(sae_dir), "--cache", str(setup.cache), "--quiet",
                 "--top-n", "5", "--n-random", "2"]) == 0
    out = capsys.readouterr().out
    assert f"saelab explore {sae_dir}" in out
    store = FeatureStore(sae_dir, setup.sae)
    assert len(store.examples(0)["top"]) == 5 and store.meta["config"]["top_n"] == 5
    assert main(["features", "export", str(sae_dir), "--html", str(tmp_path / "site"),
                 "--latents", "0-2,9"]) == 0
    assert sorted(p.name for p in (tmp_path / "site" / "feature").iterdir()) == [
        "0.html", "1.html", "2.html", "9.html"]
    assert main(["features", "build", str(sae_dir)]) == 2  # neither --cache nor --text
    assert "give either --cache" in capsys.readouterr().err
    assert parse_latents("3-5,1") == [3, 4, 5, 1] and parse_latents("") is None
    with pytest.raises(ValueError, match="bad latent list"):
        parse_latents("a-b")


def test_store_is_the_same_when_contexts_straddle_chunks(setup: TinySetup, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample and window passes read the codes in chunks; with chunks far smaller than a
    context (48 tokens), every context is split between chunks, and the store must not change."""
    from saelab.features import examples

    stream = CacheRows(setup.cache)
    cfg = FeatureBuildConfig(board_games=0)
    whole = build_store(setup.sae, stream, tmp_path / "a", cfg, tokens=stream.tokens,
                        progress=False)
    monkeypatch.setattr(examples, "CHUNK_ROWS", 37)
    split = build_store(setup.sae, stream, tmp_path / "b", cfg, tokens=stream.tokens,
                        progress=False)
    for sql in ("SELECT * FROM examples ORDER BY latent",
                "SELECT * FROM contexts ORDER BY sequence"):
        assert _table(split.path, sql) == _table(whole.path, sql)
    nan_codes = sum(int(np.isnan(np.frombuffer(r[0], dtype="<f4")).sum())
                    for r in _table(whole.path, "SELECT act_value FROM examples"))
    assert nan_codes > 0  # the corpus's special tokens are marked as not counted


def test_top_per_group_matches_a_brute_force_with_ties_and_repeated_contexts() -> None:
    """Many small batches with few contexts (so a group sees one context many times) and
    coarse scores (so ties are common), merged in many flushes: the kept entries are the best
    of each context, best first, ties broken by context then position, whatever the order the
    candidates came in."""
    rng = np.random.default_rng(3)
    n_groups, n = 7, 5
    group = rng.integers(0, n_groups, 3000)
    score = rng.integers(0, 30, 3000).astype(np.float32) / 4
    seq = rng.integers(0, 40, 3000)
    pos = rng.integers(0, 50, 3000)
    want = {}
    for g in range(n_groups):
        best: dict[int, tuple[float, int]] = {}
        for i in np.nonzero(group == g)[0]:
            s, q, p = float(score[i]), int(seq[i]), int(pos[i])
            if q not in best or (-s, p) < (-best[q][0], best[q][1]):
                best[q] = (s, p)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0], kv[1][1]))[:n]
        want[g] = [(q, p, s) for q, (s, p) in ranked]
    for order in (np.arange(3000), rng.permutation(3000)):
        top = TopPerGroup(n_groups, n, flush_at=50)
        for lo in range(0, 3000, 64):
            i = order[lo:lo + 64]
            top.offer(group[i], score[i], seq[i], pos[i], score[i])
        assert {g: top.entries(g) for g in range(n_groups)} == want


def test_a_store_of_an_older_schema_is_refused_not_deleted(setup: TinySetup,
                                                           tmp_path: Path) -> None:
    stream = CacheRows(setup.cache)
    cfg = FeatureBuildConfig(board_games=0)
    result = build_store(setup.sae, stream, tmp_path / "s", cfg, tokens=stream.tokens,
                         progress=False)
    store = FeatureStore(result.path, setup.sae)
    store.add_label(3, "kept")
    store.close()
    conn = sqlite3.connect(result.path)
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"schema version 1.*--rebuild"):
        FeatureStore(result.path)
    with pytest.raises(StoreError, match=r"schema version 1.*--rebuild"):
        build_store(setup.sae, stream, tmp_path / "s", cfg, tokens=stream.tokens,
                    progress=False)
    assert result.path.exists()
    build_store(setup.sae, stream, tmp_path / "s", cfg, tokens=stream.tokens, rebuild=True,
                progress=False)
    store = FeatureStore(result.path, setup.sae)
    assert [lab["text"] for lab in store.labels(3)] == ["kept"]
    assert store.meta["schema_version"] == 2 and store.examples(3)["top"]

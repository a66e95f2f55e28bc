"""The four concept evaluations on planted SAEs, the vision path, the text tasks and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import saelab
from saelab.architectures.base import SAE
from saelab.evals import absorption, concept_cones, monosemanticity, sparse_probing
from saelab.evals.concept_data import InputActivations, LabelledSet
from saelab.registry import build


def relu_sae(W_enc: torch.Tensor, W_dec: torch.Tensor, b_enc: torch.Tensor | None = None) -> SAE:
    """A ReLU SAE with the given weights (b_dec = 0): codes = relu(x W_enc + b_enc)."""
    d_in, d_sae = W_enc.shape
    sae = build(saelab.config_from_dict({"architecture": "relu", "d_in": d_in, "d_sae": d_sae}))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.copy_(torch.zeros(d_sae) if b_enc is None else b_enc)
        sae.b_dec.zero_()
    return sae


def planted(d: int = 6, m: int = 8) -> SAE:
    """Latent j reads and writes input dimension j (j < d); the rest are dead."""
    eye = torch.zeros(d, m)
    eye[torch.arange(d), torch.arange(d)] = 1.0
    return relu_sae(eye, eye.T.clone())


def concept_set(n: int = 400, seed: int = 0) -> LabelledSet:
    """Inputs with x0 > 0 as concept "a" and a concept "never" with no positives."""
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    labels = torch.stack([x[:, 0] > 0, torch.zeros(n, dtype=torch.bool)], 1)
    return LabelledSet("toy", InputActivations.one_token_each(x), labels, ("a", "never"))


def test_sparse_probing_finds_the_planted_latent_and_flags_empty_classes() -> None:
    cfg = sparse_probing.SparseProbingConfig(ks=[1, 2], n_splits=2, max_per_class=100)
    result = sparse_probing.run({"planted": planted()}, {"toy": concept_set()}, cfg)["planted"]
    task = result.tasks["toy"]
    assert task.n_classes_scored == 1
    # latent 0 = relu(x0) separates x0 > 0 alone (the L2 penalty moves the boundary a bit)
    assert task.sparse["1"].mean > 0.85
    assert task.full_probe.mean > 0.9
    assert task.sparse["1"].n == 2
    assert [u.item for u in result.undefined] == ["toy/never"]
    assert "no positives or no negatives" in result.undefined[0].reason
    # a latent that cannot see x0 is at chance
    blind = planted()
    with torch.no_grad():
        blind.W_enc[0, 0] = 0.0
    cfg1 = sparse_probing.SparseProbingConfig(ks=[1], n_splits=2, max_per_class=100)
    chance = sparse_probing.run({"b": blind}, {"toy": concept_set()}, cfg1)["b"]
    assert chance.tasks["toy"].sparse["1"].mean < 0.7


def test_monosemanticity_eval_latents_neurons_and_dead() -> None:
    # inputs of two kinds, embedded as two orthogonal directions; latent 0 fires on kind A
    # only (MS 1), latent 1 on both kinds alike (MS = share of same-kind pairs), the rest dead
    n = 20
    kind = torch.arange(n) % 2 == 0
    x = torch.zeros(n, 6)
    x[:, 0] = kind.float()
    x[:, 1] = 1.0 + 0.1 * torch.arange(n) / n  # varies a little: defined for the neuron too
    emb = torch.stack([kind.float(), (~kind).float()], 1)
    sae = planted()
    result = monosemanticity.run({"p": sae}, InputActivations.one_token_each(x), emb,
                                 monosemanticity.MonosemanticityConfig(per_latent=True))["p"]
    assert result.per_latent is not None
    assert result.per_latent[0] == pytest.approx(1.0)
    assert 0.3 < result.per_latent[1] < 0.6
    assert math.isnan(result.per_latent[2])
    assert result.latents.n_defined == 2
    dead = [k for k in result.latents.undefined_counts if k.startswith("dead")]
    assert dead and result.latents.undefined_counts[dead[0]] == 6
    assert result.neurons.n_units == 6
    assert result.undefined[0].item == "2"
    with pytest.raises(saelab.config.ConfigError, match="embeddings"):
        monosemanticity.run({"p": sae}, InputActivations.one_token_each(x), emb[:5],
                            monosemanticity.MonosemanticityConfig())


def test_concept_cones_contained_direction_and_undefined_concept() -> None:
    sets = {"toy": concept_set(600)}
    result = concept_cones.run({"planted": planted()}, sets, concept_cones.ConeConfig(s=2))
    scores = result["planted"].sets["toy"]
    a, never = scores.concepts
    assert a.best_latent == 0 and a.best_cosine > 0.9
    assert a.residual < 0.45  # the CBM direction leans on x0; the cone of e0 and one more
    assert a.semantic_auc > 0.95 and a.cbm_auc > 0.95
    assert math.isnan(never.residual) and never.undefined == "no CBM direction"
    assert scores.n_scored == 1
    assert any(u.item == "toy/never" for u in result["planted"].undefined)
    # an SAE whose atoms all point away from x0 contains nothing
    flipped = planted()
    with torch.no_grad():
        flipped.W_dec[0] = -flipped.W_dec[0]
    far = concept_cones.run({"f": flipped}, sets, concept_cones.ConeConfig(s=1))["f"]
    assert far.sets["toy"].concepts[0].residual > a.residual + 0.3


def absorption_words() -> absorption.WordData:
    """Letters a and b; 4 rare 'a' words (all in the test split) switch the main latent off
    and fire an absorbing latent aligned with the 'a' direction instead. They are rare enough
    (4 of 100 test words) that adding the absorber to the k-sparse probe gains < 0.03 F1."""
    gen = torch.Generator().manual_seed(0)
    rows, letters, test = [], [], []
    for i in range(200):
        rows.append([1.0, 0.0, 1.0 if i < 4 else 0.0])
        letters.append(0)
        test.append(i < 100)
    for i in range(200):
        rows.append([0.0, 1.0, 0.0])
        letters.append(1)
        test.append(i < 100)
    acts = torch.tensor(rows) + 0.01 * torch.randn(len(rows), 3, generator=gen)
    return absorption.WordData([f"w{i}" for i in range(len(rows))], acts,
                               torch.tensor(letters), torch.tensor(test), "toy", "toy")


def absorbing_sae() -> SAE:
    # latent 0 = relu(x0 − 2·x2) writes e0 (main for 'a'); latent 1 = relu(x2) writes
    # (0.8, 0, 0.6) (cos 0.8 with e0: the absorber); latent 2 = relu(x1) writes e1 ('b')
    W_enc = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [-2.0, 1.0, 0.0]])
    W_dec = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.0, 0.6], [0.0, 1.0, 0.0]])
    return relu_sae(W_enc, W_dec)


def test_absorption_on_planted_absorber() -> None:
    cfg = absorption.AbsorptionConfig(min_letters=2, min_probe_f1=0.6)
    result = absorption.run({"s": absorbing_sae()}, cfg, absorption_words())["s"]
    by_letter = {r.letter: r for r in result.letters}
    assert set(by_letter) == {"a", "b"}
    a, b = by_letter["a"], by_letter["b"]
    assert a.main_latents == [0] and b.main_latents == [2]
    assert a.n_candidates == 100  # the probe gets every test 'a' word right
    # the 4 rare words: main latent off, the absorber carries ≥ 0.4 of the probe projection
    assert a.full_absorption_rate == pytest.approx(4 / 100)
    assert a.absorption_fraction == pytest.approx(4 / 100, abs=0.005)
    assert b.absorption_fraction == 0 and b.full_absorption_rate == 0
    assert result.absorption_fraction_mean == pytest.approx((a.absorption_fraction + 0) / 2)
    assert result.n_letters_scored == 2


def test_absorption_too_few_letters_is_nan_with_reason() -> None:
    cfg = absorption.AbsorptionConfig(min_letters=3)
    result = absorption.run({"s": absorbing_sae()}, cfg, absorption_words())["s"]
    assert math.isnan(result.absorption_fraction_mean)
    assert result.undefined[-1].item == "all" and "only 2 letters" in result.undefined[-1].reason
    assert result.to_dict()["absorption_fraction_mean"] is None  # strict JSON: null


def test_vision_path_on_a_local_tiny_vit(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from PIL import Image

    from saelab.models.hf import ModelLoadError
    from saelab.models.vision import (
        build_tiny_vit,
        image_activations,
        image_embeddings,
        load_vision_model,
    )

    folder = build_tiny_vit(tmp_path / "vit")
    vm = load_vision_model(folder)
    gen = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(32, 32, 3, generator=gen) * 255).byte().numpy())
              for _ in range(10)]
    emb = image_embeddings(vm, images)
    modules = dict(vm.model.named_modules())  # transformers renamed encoder.layer → layers
    acts = image_activations(vm, "encoder.layer.1" if "encoder.layer.1" in modules
                             else "layers.1", images)
    assert emb.shape == (10, 32) and acts.shape == (10, 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(10), atol=1e-5)
    sae = build(saelab.config_from_dict({"architecture": "relu", "d_in": 32, "d_sae": 64}))
    result = monosemanticity.run({"vit": sae}, InputActivations.one_token_each(acts), emb,
                                 monosemanticity.MonosemanticityConfig(), "tiny ViT")["vit"]
    assert result.neurons.n_defined == 32 and -1 <= result.neurons.mean <= 1
    assert result.latents.n_units == 64 and result.latents.n_defined > 0
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vision_model(tmp_path / "missing")


def test_text_tasks_ship_labelled_english() -> None:
    from saelab.text.tasks import TaskError, docstring_task, sentiment_task, text_task

    docs = docstring_task()
    counts = [docs.labels.count(c) for c in range(len(docs.classes))]
    assert docs.classes == ("text", "math", "files", "network", "concurrency")
    assert min(counts) >= 50
    senti = sentiment_task()
    assert senti.classes == ("negative", "positive")
    assert senti.labels[senti.texts.index("love")] == 1
    assert senti.labels[senti.texts.index("hate")] == 0
    small = senti.subsample(10, seed=1)
    assert small.labels.count(0) == small.labels.count(1) == 10
    with pytest.raises(TaskError, match="unknown text task"):
        text_task("nope")


def test_grammar_task_labels_each_corpus_document_by_its_genre() -> None:
    from saelab.text.readers import corpus_path
    from saelab.text.tasks import text_task

    task = text_task("grammar")
    docs = [d.strip() for d in corpus_path().read_text().split("\n\n") if d.strip()]
    assert task.texts == docs and len(task.classes) == 7
    assert min(task.labels.count(c) for c in range(7)) >= 50
    # the genres' fixed openings agree with the replayed labels
    for text, label in zip(task.texts, task.labels, strict=True):
        assert text.startswith("To make") == (task.classes[label] == "recipe")
        if task.classes[label] == "dialogue":
            assert text.split("\n")[0].split(":")[0].strip() != text.split("\n")[0]


def test_first_letter_task_on_minilm_vocabulary() -> None:
    transformers = pytest.importorskip("transformers")
    from saelab.models import packaged_minilm_path
    from saelab.text.tasks import first_letter_task

    tok = transformers.AutoTokenizer.from_pretrained(packaged_minilm_path())
    task = first_letter_task(tok)
    assert len(task.texts) > 10_000
    assert all(task.classes[y] == w[0] for w, y in zip(task.texts[:500], task.labels[:500],
                                                       strict=True))
    assert not any(w.startswith("##") for w in task.texts)


def test_cli_concept_suite_on_othello(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from saelab.cli import main

    for name in ("one", "two"):
        sae = build(saelab.config_from_dict({"architecture": "topk", "k": 4, "d_in": 128,
                                             "d_sae": 64}))
        saelab.io.save(sae, tmp_path / name)
    out = tmp_path / "concepts"
    code = main(["eval", str(tmp_path / "one"), str(tmp_path / "two"), "--suite", "concepts",
                 "--model", "othello", "--train-games", "3", "--test-games", "3",
                 "--ms-inputs", "60", "--probing-n-splits", "1", "--probing-ks", "1", "2",
                 "--board-squares", "d4", "e5", "--out", str(out), "--no-plot"])
    assert code == 0
    data = json.loads((out / "one.json").read_text())
    assert data["absorption"] is None and "vocabulary" in data["skipped"]["absorption"]
    assert set(data["sparse_probing"]["mean_sparse"]) == {"1", "2"}
    assert data["monosemanticity"]["neurons"]["n_units"] == 128
    assert len(data["concept_cones"]["sets"]["board"]["concepts"]) == 192
    assert (out / "two.json").exists()
    table = (out / "table.txt").read_text()
    assert "ms_latents" in table and "skipped absorption" in table
    assert "one" in capsys.readouterr().out
    # the core suite still needs --data and one SAE
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "one")])


def test_input_pooling_and_balanced_rows() -> None:
    inputs = InputActivations(torch.tensor([[1.0, -1.0], [3.0, 0.0], [5.0, 2.0]]),
                              torch.tensor([0, 2, 3]))
    assert inputs.pool(inputs.acts_TD, "mean").tolist() == [[2.0, -0.5], [5.0, 2.0]]
    assert inputs.pool(inputs.acts_TD, "max").tolist() == [[3.0, 0.0], [5.0, 2.0]]
    assert inputs.subset([1]).acts_TD.tolist() == [[5.0, 2.0]]
    for y in (torch.tensor([True] * 3 + [False] * 10), torch.tensor([False] * 3 + [True] * 10)):
        rows = sparse_probing.balanced_rows(y, torch.arange(13), 100, torch.Generator())
        assert rows is not None and len(rows) == 6 and int(y[rows].sum()) == 3
        assert sparse_probing.balanced_rows(y, torch.arange(3, 13), 100, torch.Generator()) is None


def test_text_activations_on_packaged_minilm() -> None:
    pytest.importorskip("transformers")
    from saelab.evals.concept_data import load_text_model, text_activations

    loaded = load_text_model("")
    inputs, emb = text_activations(loaded.model, loaded.tokenizer, "encoder.layer.0",
                                   ["hello world", "cat"], max_length=16)
    assert inputs.offsets.tolist() == [0, 2, 3]  # [CLS], [SEP] and padding dropped
    assert inputs.acts_TD.shape == (3, 384)
    assert emb is not None and emb.shape == (2, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    only, none = text_activations(loaded.model, loaded.tokenizer, "encoder.layer.0", ["cat"],
                                  embed=False)
    assert none is None and torch.allclose(only.acts_TD, inputs.acts_TD[2:], atol=1e-5)


def test_layer_check_picks_the_hook_where_most_letters_pass() -> None:
    pytest.importorskip("transformers")
    from saelab.evals.absorption import (
        AbsorptionConfig,
        LayerCheck,
        best_hook,
        letter_probe_by_hook,
    )

    checks = [LayerCheck("a", 0.95, 3, 100), LayerCheck("b", 0.4, 7, 100),
              LayerCheck("c", 0.6, 7, 100), LayerCheck("d", math.nan, 0, 0)]
    assert best_hook(checks).hook == "c"  # most letters passing, then the higher mean F1
    cfg = AbsorptionConfig(max_words=300, min_probe_f1=0.0)
    found = letter_probe_by_hook(cfg, ["embeddings", "encoder.layer.0"])
    assert [c.hook for c in found] == ["embeddings", "encoder.layer.0"]
    for c in found:
        assert c.n_words > 150 and 0 <= c.mean_probe_f1 <= 1
        assert 0 < c.n_letters_passing <= 26  # filter 0: every letter with F1 > 0 passes

"""Feature absorption on the first-letter task (Chanin et al.; SAEBench's fraction metric).

Stages:
1. **Words**: whole-word alphabetic tokens of the model's vocabulary, each run alone through
   the model (``[CLS] word [SEP]`` for MiniLM) and read at the hook on the word's token; split
   into training and test words.
2. **Ground truth**: a one-vs-rest logistic probe per first letter on the raw activations
   (class-balanced). Letters whose probe has test F1 ≤ ``min_probe_f1`` are left out.
3. **Main latents** per letter: the k-sparse rule: latents ranked by mean code on the letter's
   training words minus on the others; k grows from 1 while a balanced logistic probe on the
   top-k codes gains more than ``f1_gain`` test F1 (SAEBench's rule), up to ``k_max``.
4. **Absorption** on the letter's test words that the probe gets right: per-word absorption
   fraction and full absorption (``saelab.metrics.concepts``); per letter, the mean over those
   words; reported as the mean ± std over letters.

Undefined cases are NaN with a reason: a letter with no training words, no probe-positive test
words, or fewer than ``min_letters`` letters passing the probe filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saelab.architectures.base import SAE
from saelab.config import ConfigError, option, to_dict
from saelab.evals.concept_data import (
    InputActivations,
    JsonResult,
    check_sae_width,
    labels_one_hot,
    load_text_model,
    sae_l0,
    text_activations,
)
from saelab.evals.probing import LinearProbe, fit_logistic, fit_logistic_batched, pad_rows
from saelab.metrics.concepts import (
    NAN,
    Undefined,
    absorption_fractions,
    binary_f1,
    full_absorption,
    nan_mean,
    nan_std,
    top_k_latents,
)


@dataclass
class AbsorptionConfig:
    """Options of the first-letter absorption evaluation."""

    max_words: int = option(6000, "use at most this many vocabulary words (seeded sample)")
    test_fraction: float = option(0.2, "share of words held out for scoring")
    k_max: int = option(10, "largest number of main latents per letter")
    f1_gain: float = option(0.03, "grow k while the k-sparse probe's F1 gains more than this")
    min_probe_f1: float = option(0.6, "letters whose ground-truth probe F1 is at most this are "
                                 "left out")
    min_letters: int = option(10, "fewer letters passing the probe filter gives NaN")
    seed: int = option(0, "seed of the word sample and split")

    def validate(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise ConfigError("test_fraction must be between 0 and 1")
        if self.k_max < 1 or self.max_words < 2:
            raise ConfigError("k_max must be ≥ 1 and max_words ≥ 2")


@dataclass
class WordData:
    """Activations of single-token words, their first letters and the train/test split."""

    words: list[str]
    acts_ND: Tensor
    letter_N: Tensor  # 0..25
    is_test_N: Tensor
    model: str
    hook: str


def collect_words(cfg: AbsorptionConfig, model: str = "", hook: str = "encoder.layer.3",
                  loaded: Any | None = None) -> WordData:
    """Run every sampled vocabulary word alone through ``model`` (a Hugging Face id or folder;
    empty = the packaged MiniLM, or an already ``loaded`` one) and keep the words that are one
    token, read at ``hook``."""
    import random

    from saelab.text.tasks import first_letter_task

    cfg.validate()
    loaded = loaded or load_text_model(model)
    task = first_letter_task(loaded.tokenizer)
    if len(task.texts) > cfg.max_words:
        task = task.subsample(max(1, cfg.max_words // len(task.classes)), cfg.seed)
    inputs = text_activations(loaded.model, loaded.tokenizer, hook, task.texts,
                              embed=False)[0]
    one_token = (inputs.offsets[1:] - inputs.offsets[:-1]) == 1
    rows = one_token.nonzero().flatten()
    acts = inputs.acts_TD[inputs.offsets[rows]]
    rng = random.Random(cfg.seed)
    test = torch.zeros(len(rows), dtype=torch.bool)
    test[rng.sample(range(len(rows)), max(1, round(cfg.test_fraction * len(rows))))] = True
    return WordData([task.texts[i] for i in rows], acts,
                    torch.tensor([task.labels[i] for i in rows]), test, loaded.name, hook)


@dataclass
class LetterProbe:
    letter: str
    n_train: int
    n_test: int
    probe_f1: float


@dataclass
class GroundTruth:
    probe: LinearProbe
    letters: list[LetterProbe]
    directions_KD: Tensor  # the probe's direction per letter in activation space
    predicted_test_NK: Tensor


def fit_ground_truth(data: WordData) -> GroundTruth:
    """The 26 one-vs-rest probes on the training words, scored on the test words."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    y = labels_one_hot(data.letter_N.tolist(), 26)
    train, test = ~data.is_test_N, data.is_test_N
    probe = fit_logistic(data.acts_ND[train], y[train], balanced=True)
    predicted = probe.predict(data.acts_ND[test])
    out = [LetterProbe(letters[k], int(y[train, k].sum()), int(y[test, k].sum()),
                       binary_f1(predicted[:, k], y[test, k])) for k in range(26)]
    return GroundTruth(probe, out, probe.directions().float(), predicted)


@dataclass
class LayerCheck:
    """How well one hook point encodes first letters: the ground-truth probes' test F1."""

    hook: str
    mean_probe_f1: float
    n_letters_passing: int  # letters whose probe F1 > min_probe_f1 (absorption scores these)
    n_words: int


def letter_probe_by_hook(cfg: AbsorptionConfig, hooks: list[str], model: str = "",
                         loaded: Any | None = None) -> list[LayerCheck]:
    """The probe-F1 check that picks the layer absorption runs at: for every hook, the mean
    first-letter probe F1 over the 26 letters and the number of letters passing
    ``min_probe_f1``. Absorption at a layer where few letters pass measures noise."""
    loaded = loaded or load_text_model(model)
    out = []
    for hook in hooks:
        data = collect_words(cfg, hook=hook, loaded=loaded)
        f1s = [lp.probe_f1 for lp in fit_ground_truth(data).letters]
        out.append(LayerCheck(hook, nan_mean(f1s),
                              sum(1 for f in f1s if f > cfg.min_probe_f1), len(data.words)))
    return out


def best_hook(checks: list[LayerCheck]) -> LayerCheck:
    """The hook with the most letters passing the probe filter (ties: higher mean F1, then the
    earlier hook)."""
    if not checks:
        raise ConfigError("no hooks to choose from; give at least one hook")
    return max(checks, key=lambda c: (c.n_letters_passing, c.mean_probe_f1
                                      if c.mean_probe_f1 == c.mean_probe_f1 else -1.0))


@dataclass
class LetterAbsorption:
    """One letter's main latents and absorption (NaN + ``undefined`` when it has none)."""

    letter: str
    probe_f1: float
    main_latents: list[int]
    main_f1: float
    n_candidates: int  # test words of this letter the probe gets right
    absorption_fraction: float
    full_absorption_rate: float
    undefined: str = ""


@dataclass
class AbsorptionResult(JsonResult):
    """Absorption of one SAE; lower is better. Means and stds run over the scored letters."""

    sae: str
    d_sae: int
    l0: float
    absorption_fraction_mean: float
    absorption_fraction_std: float
    full_absorption_mean: float
    full_absorption_std: float
    mean_main_latents: float
    n_letters_scored: int
    letters: list[LetterAbsorption]
    undefined: list[Undefined] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def _codes(sae: SAE, acts_ND: Tensor) -> Tensor:
    return InputActivations.one_token_each(acts_ND).pooled_codes(sae, "mean")


def main_latents(codes_train: Tensor, y_train_NL: Tensor, codes_test: Tensor,
                 y_test_NL: Tensor, k_max: int, f1_gain: float
                 ) -> tuple[list[list[int]], list[float]]:
    """The k-sparse rule of step 3 for L letters at once (one batched probe fit per k): for
    each letter, its main latents and their probe's test F1."""
    n_letters = y_train_NL.shape[1]
    ranked = [top_k_latents(codes_train, y_train_NL[:, j], k_max, signed=True)
              for j in range(n_letters)]
    chosen: list[list[int]] = [[] for _ in range(n_letters)]
    best = [NAN] * n_letters
    growing = list(range(n_letters))
    for k in range(1, k_max + 1):
        growing = [j for j in growing if len(ranked[j]) >= k]
        if not growing:
            break
        x_tr, y_tr, m_tr = pad_rows([codes_train[:, ranked[j][:k]] for j in growing],
                                    [y_train_NL[:, j] for j in growing])
        probe = fit_logistic_batched(x_tr, y_tr, m_tr, balanced=True)
        z = torch.stack([codes_test[:, ranked[j][:k]] for j in growing]).double()
        logits = torch.einsum("bnf,bf->bn", (z - probe.mean_F[:, None]) / probe.std_F[:, None],
                              probe.weight_FK) + probe.bias_K[:, None]
        still = []
        for b, j in enumerate(growing):
            f1 = binary_f1(logits[b] > 0, y_test_NL[:, j])
            if chosen[j] and not f1 - best[j] > f1_gain:
                continue  # stop growing this letter
            chosen[j], best[j] = ranked[j][:k], f1
            still.append(j)
        growing = still
    return chosen, best


def evaluate_sae(sae: SAE, data: WordData, truth: GroundTruth, cfg: AbsorptionConfig,
                 name: str = "sae") -> AbsorptionResult:
    check_sae_width(sae, data.acts_ND.shape[1])
    train, test = ~data.is_test_N, data.is_test_N
    codes_train, codes_test = _codes(sae, data.acts_ND[train]), _codes(sae, data.acts_ND[test])
    acts_test = data.acts_ND[test]
    W_dec = sae.W_dec.detach()
    undefined: list[Undefined] = []
    rows: list[LetterAbsorption] = []
    letters = [k for k, lp in enumerate(truth.letters)
               if lp.probe_f1 > cfg.min_probe_f1]  # NaN F1 (no test words) also fails
    for k in [k for k in letters if not (data.letter_N[train] == k).any()]:
        reason = "no training words with this letter"
        lp = truth.letters[k]
        rows.append(LetterAbsorption(lp.letter, lp.probe_f1, [], NAN, 0, NAN, NAN, reason))
        undefined.append(Undefined(lp.letter, reason))
    letters = [k for k in letters if (data.letter_N[train] == k).any()]
    y_train_NL = data.letter_N[train][:, None] == torch.tensor(letters)[None, :]
    y_test_NL = data.letter_N[test][:, None] == torch.tensor(letters)[None, :]
    mains, main_f1s = main_latents(codes_train, y_train_NL, codes_test, y_test_NL, cfg.k_max,
                                   cfg.f1_gain) if letters else ([], [])
    for k, main, main_f1 in zip(letters, mains, main_f1s, strict=True):
        lp = truth.letters[k]
        y_test = data.letter_N[test] == k
        candidates = y_test & truth.predicted_test_NK[:, k]
        if not candidates.any():
            reason = "the probe gets no test word of this letter right"
            rows.append(LetterAbsorption(lp.letter, lp.probe_f1, main, main_f1, 0, NAN, NAN,
                                         reason))
            undefined.append(Undefined(lp.letter, reason))
            continue
        args = (acts_test[candidates], codes_test[candidates], W_dec, truth.directions_KD[k], main)
        rows.append(LetterAbsorption(
            lp.letter, lp.probe_f1, main, main_f1, int(candidates.sum()),
            float(absorption_fractions(*args).mean()), float(full_absorption(*args).double().mean())))
    scored = [r for r in rows if not r.undefined]
    fractions = [r.absorption_fraction for r in scored]
    fulls = [r.full_absorption_rate for r in scored]
    if len(scored) < cfg.min_letters:
        undefined.append(Undefined("all", f"only {len(scored)} letters have a probe with F1 > "
                                   f"{cfg.min_probe_f1} and scored words (need "
                                   f"{cfg.min_letters}); use more words or a later layer"))
        summary = (NAN, NAN, NAN, NAN)
    else:
        summary = (nan_mean(fractions), nan_std(fractions), nan_mean(fulls), nan_std(fulls))
    return AbsorptionResult(
        name, sae.cfg.d_sae, sae_l0(sae, data.acts_ND), *summary,
        nan_mean([len(r.main_latents) for r in scored]), len(scored), rows, undefined,
        to_dict(cfg))


def run(saes: dict[str, SAE], cfg: AbsorptionConfig, data: WordData | None = None,
        model: str = "", hook: str = "encoder.layer.3") -> dict[str, AbsorptionResult]:
    """Absorption of every named SAE (the words and the ground-truth probe are shared)."""
    data = data or collect_words(cfg, model, hook)
    truth = fit_ground_truth(data)
    return {name: evaluate_sae(sae, data, truth, cfg, name) for name, sae in saes.items()}

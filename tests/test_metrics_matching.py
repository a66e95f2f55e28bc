import itertools
import math

import pytest
import torch

from saelab.metrics import (
    decoder_pairwise_cosine,
    match_directions,
    matching_metrics,
    mean_max_cosine,
    orderedness,
    recovered_share,
    stability,
)

EYE4 = torch.eye(4)


def _orthonormal(n: int, d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def test_hand_computed_match() -> None:
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    learned = torch.tensor([[1.0, 0.1], [1.0, 0.0]])  # row 1 is exactly feature 0
    match = match_directions(learned, reference)
    # Pairing (1→0, 0→1) scores 1 + 0.0995 > (0→0, 1→1) = 0.995 + 0.
    assert match.reference_index_L.tolist() == [0, 1]
    assert match.learned_index_L.tolist() == [1, 0]
    expected = [1.0, 0.1 / math.sqrt(1.01)]
    assert match.similarity_L.tolist() == pytest.approx(expected, rel=1e-6)
    assert stability(learned, reference) == pytest.approx(sum(expected) / 2, rel=1e-6)
    assert orderedness(learned, reference) == pytest.approx(-1.0)
    assert recovered_share(learned, reference, threshold=0.9) == 0.5


def test_mean_max_cosine_has_no_one_to_one_constraint() -> None:
    reference = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    learned = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # row 0 sits between both
    assert mean_max_cosine(learned, reference) == pytest.approx(1 / math.sqrt(2))
    assert stability(learned, reference) == pytest.approx(1 / (2 * math.sqrt(2)))


def test_permutation_gives_full_stability_and_hand_orderedness() -> None:
    perm = torch.tensor([1, 0, 2, 3])  # learned row k = reference row perm[k]
    learned = EYE4[perm]
    assert stability(learned, EYE4) == pytest.approx(1.0)
    # μ = [1, 0, 2, 3]: Σd² = 2, Ord = 1 − 6·2 / (4·15)
    assert orderedness(learned, EYE4) == pytest.approx(0.8)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(4)))[::5])
def test_orderedness_is_spearman_of_the_inverse_permutation(perm: tuple[int, ...]) -> None:
    learned = EYE4[list(perm)]
    inverse = torch.argsort(torch.tensor(perm)).double()
    d2 = float((torch.arange(4).double() - inverse).pow(2).sum())
    assert orderedness(learned, EYE4) == pytest.approx(1 - 6 * d2 / (4 * 15))


def test_reversed_order_gives_minus_one() -> None:
    features = _orthonormal(10, 16)
    assert orderedness(features.flip(0), features) == pytest.approx(-1.0)
    assert orderedness(features, features) == pytest.approx(1.0)
    assert stability(features.flip(0), features) == pytest.approx(1.0)


def test_sign_flip_counts_unless_signed() -> None:
    features = _orthonormal(5, 8)
    assert stability(-features, features) == pytest.approx(1.0)
    # Signed: every matched cosine is −1 or 0, the best matching avoids the −1 diagonal.
    assert stability(-features, features, signed=True) == pytest.approx(0.0, abs=1e-6)


def test_more_learned_rows_than_reference() -> None:
    features = _orthonormal(4, 12)
    extra = torch.randn(6, 12, generator=torch.Generator().manual_seed(1)) * 0.01
    learned = torch.cat([features, extra])
    assert stability(learned, features) == pytest.approx(1.0)
    assert orderedness(learned, features) == pytest.approx(1.0)
    assert recovered_share(learned, features) == 1.0


def test_fewer_learned_rows_counts_missing_features_as_zero() -> None:
    features = _orthonormal(5, 8)
    learned = features[[2, 0, 4]]
    assert stability(learned, features) == pytest.approx(3 / 5)
    assert recovered_share(learned, features) == pytest.approx(3 / 5)
    # matched pairs (0→1), (2→0), (4→2): learned ranks [1, 0, 2] vs reference ranks [0, 1, 2]
    assert orderedness(learned, features) == pytest.approx(1 - 6 * 2 / (3 * 8))
    assert mean_max_cosine(learned, features) == pytest.approx(3 / 5, abs=1e-6)


def test_prefix_truncates_both_sides() -> None:
    features = _orthonormal(6, 8)
    learned = features[[0, 1, 2, 5, 3, 4]]  # first half in order, second half shuffled
    assert orderedness(learned, features) < 1.0
    assert orderedness(learned, features, prefix=3) == pytest.approx(1.0)
    assert stability(learned, features, prefix=4) == pytest.approx(3 / 4)


def test_matching_metrics_bundle() -> None:
    features = _orthonormal(6, 8)
    result = matching_metrics(features.flip(0), features)
    assert result == pytest.approx(
        {"stability": 1.0, "orderedness": -1.0, "recovered_share": 1.0, "mean_max_cosine": 1.0}
    )


def test_decoder_pairwise_cosine_by_hand_and_chunked() -> None:
    decoder = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = (0 + 1 / math.sqrt(2) + 1 / math.sqrt(2)) / 3
    assert decoder_pairwise_cosine(decoder) == pytest.approx(expected)
    assert decoder_pairwise_cosine(decoder, chunk_size=1) == pytest.approx(expected)

    rows = torch.randn(50, 8, generator=torch.Generator().manual_seed(2))
    unit = torch.nn.functional.normalize(rows.double(), dim=1)
    i, j = torch.triu_indices(50, 50, offset=1)
    brute = float((unit @ unit.T)[i, j].abs().mean())
    assert decoder_pairwise_cosine(rows, chunk_size=7) == pytest.approx(brute, rel=1e-5)
    assert decoder_pairwise_cosine(_orthonormal(10, 10)) == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"W_dec\.T"):
        stability(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="2-D"):
        stability(torch.randn(4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="NaN"):
        stability(torch.full((2, 2), float("nan")), torch.eye(2))
    with pytest.raises(ValueError, match="at least 2 matched pairs"):
        orderedness(torch.eye(3)[:1], torch.eye(3))
    with pytest.raises(ValueError, match="prefix"):
        stability(EYE4, EYE4, prefix=0)
    with pytest.raises(ValueError, match="at least 2 rows"):
        decoder_pairwise_cosine(torch.ones(1, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        decoder_pairwise_cosine(EYE4, chunk_size=0)

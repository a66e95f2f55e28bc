"""SAE metrics: reconstruction/sparsity (core) and direction matching against references.

Every metric is defined once, with its formula in the docstring; docs/metrics.md explains the
choices and where peer libraries differ.
"""

from saelab.metrics.core import (
    DEFAULT_DENSE_THRESHOLD,
    CoreMetrics,
    CoreMetricsAccumulator,
    core_metrics,
)
from saelab.metrics.matching import (
    DEFAULT_RECOVERY_THRESHOLD,
    DirectionMatch,
    cosine_similarity_matrix,
    decoder_pairwise_cosine,
    match_directions,
    matching_metrics,
    mean_max_cosine,
    orderedness,
    orderedness_of,
    recovered_share,
    recovered_share_of,
    stability,
    stability_of,
)

__all__ = [
    "DEFAULT_DENSE_THRESHOLD",
    "DEFAULT_RECOVERY_THRESHOLD",
    "CoreMetrics",
    "CoreMetricsAccumulator",
    "DirectionMatch",
    "core_metrics",
    "cosine_similarity_matrix",
    "decoder_pairwise_cosine",
    "match_directions",
    "matching_metrics",
    "mean_max_cosine",
    "orderedness",
    "orderedness_of",
    "recovered_share",
    "recovered_share_of",
    "stability",
    "stability_of",
]

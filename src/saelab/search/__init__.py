"""Finding the right SAE: sweeps that choose hyper-parameters from ground-truth-free proxies.

`l0` sweeps the L0 of TopK/BatchTopK SAEs over several seeds and picks the L0 where the
correct-L0 proxies of "Sparse but Wrong" (saelab.metrics.proxies) stop rising.
"""

from saelab.search.l0 import L0SearchConfig, L0SearchResult, choose_l0, run_l0_search

__all__ = ["L0SearchConfig", "L0SearchResult", "choose_l0", "run_l0_search"]

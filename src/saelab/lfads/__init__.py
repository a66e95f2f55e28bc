"""AutoLFADS: sequential variational autoencoders for spiking neural data (methods.md §11).

- :mod:`saelab.lfads.config`: typed options of the model, its training and synthetic data.
- :mod:`saelab.lfads.model`: the LFADS network (encoder → g₀, controller with an AR(1) input
  prior, generator, factors, Poisson rates).
- :mod:`saelab.lfads.losses`: Poisson likelihood, KL terms, coordinated dropout and sample
  validation.
- :mod:`saelab.lfads.data`: the ``SpikeData`` container and synthetic Lorenz / chaotic-RNN data
  with ground truth; :mod:`saelab.lfads.nwb`: loading binned spikes from NWB files.
- :mod:`saelab.lfads.trainer`: training with checkpoints, exact resume and progress.
- :mod:`saelab.lfads.metrics`: rate R², latent R², co-bps, decoding R².
- :mod:`saelab.lfads.evaluate`: inference, metrics on test trials and the report with plots.
- :mod:`saelab.lfads.autolfads`: population-based training on Ray Tune (reuses
  :mod:`saelab.sweep.pbt`), selected by sample-validation loss.
"""

from saelab.lfads.config import LFADSModelConfig, LFADSRunConfig, LFADSTrainConfig, SyntheticConfig
from saelab.lfads.data import SpikeData, synthetic
from saelab.lfads.model import LFADS

__all__ = ["LFADS", "LFADSModelConfig", "LFADSRunConfig", "LFADSTrainConfig", "SpikeData",
           "SyntheticConfig", "synthetic"]

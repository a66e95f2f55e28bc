"""Sweeps and population-based training of SAEs on Ray Tune (``saelab sweep CONFIG``).

- :mod:`saelab.sweep.config`: the typed ``[sweep]`` section (search, metric, parameters) and
  its translation into a Ray Tune search space.
- :mod:`saelab.sweep.pbt`: population-based training over *any* trainable whose state is a
  folder (SAEs here; AutoLFADS reuses it): the scheduler, and reporting / restoring state
  through Ray checkpoints so that PBT's exploit step copies the trainable's own checkpoints.
- :mod:`saelab.sweep.trainable`: one trial = one saelab training run, resumable, reporting
  every ``report_every`` steps.
- :mod:`saelab.sweep.runner`: runs (or resumes) the sweep on a local Ray or an existing
  cluster, and writes one results table and one plot.

Ray is an optional dependency: ``pip install 'saelab[sweep]'``.
"""

from saelab.sweep.config import SweepConfig, SweepFile, load_sweep_file

__all__ = ["SweepConfig", "SweepFile", "load_sweep_file"]

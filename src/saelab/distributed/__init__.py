"""Training on many processes and machines with torch.distributed (launched by ``torchrun``).

Two layouts:

- data parallel (:mod:`saelab.distributed.data_parallel`, what ``torchrun ... saelab train``
  runs): every rank holds every SAE whole and reads
  its own shard of each batch; gradients are averaged, and batch-wide statistics (BatchTopK's
  selection and threshold, the AuxK normaliser, dead-latent counters) are reduced, so N ranks
  train exactly what one process would on the full batch.
- latent sharded (:mod:`saelab.distributed.latent_sharded`, a library API): each rank holds a slice of a TopK
  SAE's latents; selection is exact across slices by exchanging per-slice candidates (the
  OpenAI TopK paper's layout), for SAEs too wide for one device.

Gloo runs on CPU (and in the tests), NCCL on GPUs. Checkpoints are written once, by rank 0, in
the ordinary single-process format, so a run resumes on any number of ranks.
"""

from saelab.distributed.data_parallel import DataParallel, init_from_env, is_comm_error
from saelab.distributed.shard import RankShard

__all__ = ["DataParallel", "RankShard", "init_from_env", "is_comm_error"]

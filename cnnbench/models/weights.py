"""Pretrained weights from local files (`model.weights=PATH`): nothing is ever downloaded.

A file is either a raw state_dict (torchvision's ImageNet `.pth` files) or a cnnbench
checkpoint (`{"model": state_dict, ...}`, e.g. a run's best.pt). Every tensor must fit the
model; the only exception is the classifier head (the model's last Linear layer), which is
left freshly initialized when the file was trained for another number of classes. Anything
else that does not fit stops the run with one message, before a single tensor is copied.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint
from ..errors import CnnbenchError
from .registry import count_params, get_model_info

log = logging.getLogger("cnnbench")

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


def classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's last Linear layer (torchvision's `classifier.6` / `fc`) and its name."""
    heads = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise CnnbenchError(f"{model.__class__.__name__} has no Linear classifier head")
    return heads[-1]


def torchvision_weights_hint(name: str) -> str:
    """Where the ImageNet weights for `name` come from, or what else to use."""
    tv = get_model_info(name).torchvision
    if tv is None:
        return (
            f"{name!r} has no published pretrained weights; use a cnnbench checkpoint of it "
            "(a run's best.pt)"
        )
    import torchvision.models as tvm

    url = tvm.get_model_weights(tv).DEFAULT.url
    file = url.rsplit("/", 1)[-1]
    return (
        f"for {name!r} that is torchvision's ImageNet file {file} (from {url}; a machine that "
        f"ran torchvision.models.{tv}(weights='DEFAULT') has it in "
        "~/.cache/torch/hub/checkpoints/), or a cnnbench checkpoint (a run's best.pt)"
    )


def read_state_dict(path: Path, name: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, checkpoint extras) from a raw state_dict or a cnnbench checkpoint."""
    if not path.is_file():
        raise CnnbenchError(
            f"model.weights file not found: {path}. cnnbench never downloads weights: copy the "
            f"file there or point model.weights at it; {torchvision_weights_hint(name)}"
        )
    obj = load_checkpoint(path)
    extras: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        extras = {k: v for k, v in obj.items() if k != "model"}
        obj = obj["model"]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values())):
        raise CnnbenchError(
            f"{path} holds no state_dict (expected a dict of tensors, or a cnnbench checkpoint "
            f"with a 'model' entry); {torchvision_weights_hint(name)}"
        )
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            metadata = getattr(obj, "_metadata", None)
            obj = OrderedDict((k[len(prefix) :], v) for k, v in obj.items())
            if metadata is not None:
                obj._metadata = OrderedDict((k[len(prefix) :], v) for k, v in metadata.items())
    return obj, extras


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_state(
    model: nn.Module, state: dict[str, Tensor], *, what: str, hint: str = ""
) -> str | None:
    """Copy `state` into `model`: all of it, or all but a classifier head of another size.

    Returns the replaced head's description (None when the whole state loaded). Raises one
    CnnbenchError listing what does not fit, before anything is copied.
    """
    own = model.state_dict()
    head_name, head = classifier_head(model)
    head_keys = {f"{head_name}.weight", f"{head_name}.bias"}
    # Files saved before PyTorch 0.4.1 lack BatchNorm's counters; load_state_dict fills them in.
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    replace_head = (
        bool(mismatched)
        and set(mismatched) <= head_keys
        and f"{head_name}.weight" in state
        and state[f"{head_name}.weight"].shape[1:] == own[f"{head_name}.weight"].shape[1:]
    )
    if replace_head:
        mismatched = []
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            shown = ", ".join(
                f"{k} (file {_shape(state[k])}, model {_shape(own[k])})" for k in mismatched[:4]
            )
            problems.append(f"{len(mismatched)} shape mismatch(es): {shown}")
        if missing:
            problems.append(
                f"{len(missing)} key(s) missing from the file: {', '.join(missing[:4])}"
            )
        if unexpected:
            problems.append(
                f"{len(unexpected)} key(s) the model does not have: {', '.join(unexpected[:4])}"
            )
        raise CnnbenchError(f"{what} does not fit: {'; '.join(problems)}. Nothing was loaded{hint}")
    if replace_head:
        keep = OrderedDict((k, v) for k, v in state.items() if k not in head_keys)
        if hasattr(state, "_metadata"):
            keep._metadata = state._metadata
        model.load_state_dict(keep, strict=False)  # checked above: only the head is left out
        old = state[f"{head_name}.weight"].shape[0]
        return f"{head_name} ({old} -> {head.out_features} classes, freshly initialized)"
    model.load_state_dict(state)
    return None


def freeze_features(model: nn.Module) -> tuple[str, int]:
    """Train only the classifier head: requires_grad False everywhere else.

    BatchNorm layers keep their running statistics as loaded (momentum 0), so in eval mode
    the features compute exactly what the pretrained network computed. Returns (head name,
    trainable parameter count).
    """
    head_name, head = classifier_head(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    return head_name, count_params(head)


def apply_weights(model: nn.Module, mcfg: Any) -> None:
    """Do what `model.weights` and `model.freeze_features` ask, reporting it in the log."""
    if mcfg.weights:
        path = Path(mcfg.weights).expanduser()
        state, extras = read_state_dict(path, mcfg.name)
        saved_as = extras.get("model_name")
        what = f"{path}" + (f" (saved from model {saved_as!r})" if saved_as else "")
        with torch.no_grad():
            replaced = load_state(
                model,
                state,
                what=f"{what} for model {mcfg.name!r}",
                hint=f"; expected weights: {torchvision_weights_hint(mcfg.name)}",
            )
        log.info(f"loaded weights for {mcfg.name} from {path}")
        if replaced:
            log.info(f"replaced the classifier head {replaced}")
    if mcfg.freeze_features:
        head_name, trainable = freeze_features(model)
        note = "" if mcfg.weights else " (no model.weights: the frozen features stay random)"
        log.info(
            f"model.freeze_features: training only {head_name}, {trainable:,} of "
            f"{count_params(model):,} parameters{note}"
        )

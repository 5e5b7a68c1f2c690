"""Pretrained weights from local files (`model.weights=PATH`): nothing is ever downloaded.

A file is either a raw state_dict (torchvision's ImageNet `.pth` files) or a cnnbench
checkpoint (`{"model": state_dict, ...}`, e.g. a run's best.pt). Every tensor must fit the
model; the exceptions are the classifier head (`classifier_head`), which is left freshly
initialized when the file was trained for another number of classes, and the auxiliary
classifiers of GoogLeNet / Inception-v3 files (cnnbench builds those models without them).
Anything else that does not fit stops the run with one message, before a single tensor is
copied.
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
# Auxiliary classifiers in torchvision's GoogLeNet / Inception-v3 files (training-time only).
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def classifier_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The layer that outputs the logits, and its name.

    timm models name it (`get_classifier()`); otherwise it is the last Linear layer, which for
    every torchvision family is the head: `fc` (ResNet, RegNet, ShuffleNet, GoogLeNet,
    Inception), `classifier.N` (AlexNet, VGG, DenseNet, MobileNet, EfficientNet, MNASNet,
    ConvNeXt, MaxViT), `heads.head` (ViT), `head` (Swin). SqueezeNet has no Linear layer: its
    head is the last Conv2d (`classifier.1`, a 1x1 convolution to the classes).
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for name, module in model.named_modules():
            if module is head and isinstance(module, (nn.Linear, nn.Conv2d)):
                return name, module
    for kind in (nn.Linear, nn.Conv2d):
        heads = [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]
        if heads:
            return heads[-1]
    raise CnnbenchError(f"{model.__class__.__name__} has no Linear or Conv2d classifier head")


def head_outputs(head: nn.Module) -> int:
    return head.out_features if isinstance(head, nn.Linear) else head.out_channels


def torchvision_weights_hint(name: str) -> str:
    """Where the ImageNet weights for `name` come from, or what else to use."""
    info = get_model_info(name)
    tv = info.torchvision
    if name.startswith("timm/"):
        return (
            f"for {name!r} that is a state_dict saved on a connected machine with "
            f"torch.save(timm.create_model({name[5:]!r}, pretrained=True).state_dict(), PATH), "
            "or a cnnbench checkpoint (a run's best.pt)"
        )
    if tv is None:
        return (
            f"{name!r} has no published pretrained weights; use a cnnbench checkpoint of it "
            "(a run's best.pt)"
        )
    import torchvision.models as tvm

    enum = tvm.get_model_weights(tv)
    url = (enum[info.weights] if info.weights else enum.DEFAULT).url
    file = url.rsplit("/", 1)[-1]
    return (
        f"for {name!r} that is torchvision's ImageNet file {file} (from {url}; a machine that "
        f"ran torchvision.models.{tv}(weights='{info.weights or 'DEFAULT'}') has it in "
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
    aux = [k for k in state if k.startswith(AUX_PREFIXES) and k not in own]
    if aux:
        kept = OrderedDict((k, v) for k, v in state.items() if k not in set(aux))
        if hasattr(state, "_metadata"):
            kept._metadata = state._metadata
        state = kept
        log.info(f"left out the file's {len(aux)} auxiliary-classifier tensors ({aux[0]}, ...)")
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
        return f"{head_name} ({old} -> {head_outputs(head)} classes, freshly initialized)"
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

"""Ship a trained model: ONNX / TorchScript export of best.pt, checked on export, and an
onnxruntime classifier that needs nothing but the .onnx file.

The exported graph takes the normalized float batch (N x C x H x W, N dynamic) and returns
logits, like the PyTorch model. What a user needs to feed it is stored with it as metadata
(ONNX metadata_props, TorchScript _extra_files), every value a string:
model_name, classes (JSON list), num_classes, input_size (JSON [C, H, W]), mean and std
(JSON lists, on the [0, 1] scale), preprocessing (how pixels become the input),
config_hash (runs.config_hash: sha256 of the run's saved config), epoch, cnnbench_version.

onnx, onnxscript and onnxruntime come with the `export` extra: pip install 'cnnbench[export]'.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .errors import CnnbenchError
from .runs import config_hash
from .train import load_best, model_from_checkpoint, normalization

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
ATOL = 1e-4  # max |logit difference| between PyTorch and the exported model (fp32)
CHECK_BATCH = 3  # verification batch: not the export's example batch of 2 (a dynamic axis)
METADATA_KEYS = ("model_name", "classes", "num_classes", "input_size", "mean", "std")  # needed
METADATA_FIELDS = (*METADATA_KEYS, "preprocessing", "config_hash", "epoch", "cnnbench_version")
PREPROCESSING = (
    "uint8 pixels (RGB, or L for 1 channel) resized to input_size, as float32 N x C x H x W: "
    "(x / 255 - mean) / std per channel"
)
_NOISY_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir", "torch.export", "torch._dynamo")


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency of the export extra, or fail naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CnnbenchError(
            f"{purpose} needs the {module} package: pip install 'cnnbench[export]'"
        ) from None


def export_metadata(
    ckpt: dict[str, Any], mean: list[float], std: list[float], cfg_hash: str = ""
) -> dict[str, str]:
    """The metadata stored with an exported model (every value a string, lists as JSON)."""
    return {
        "model_name": str(ckpt["model_name"]),
        "classes": json.dumps(list(ckpt["classes"])),
        "num_classes": str(int(ckpt["num_classes"])),
        "input_size": json.dumps([int(v) for v in ckpt["input_size"]]),
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "preprocessing": PREPROCESSING,
        "config_hash": cfg_hash,
        "epoch": str(ckpt.get("epoch", "")),
        "cnnbench_version": __version__,
    }


@dataclass(frozen=True)
class ExportedModel:
    """What `export_model` wrote and how closely it matches PyTorch."""

    path: Path
    format: str
    max_abs_diff: float
    batch: int
    seconds: float
    metadata: dict[str, str]  # as read back from the written file
    opset: int | None = None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The ONNX exporter's progress prints, warnings and log lines off; errors still raise."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name in saved:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        with (
            warnings.catch_warnings(),
            open(os.devnull, "w") as null,
            contextlib.redirect_stdout(null),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _check_inputs(input_size: tuple[int, int, int], seed: int) -> torch.Tensor:
    """A fixed random batch of normalized images (standard normal) for the round trip."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(CHECK_BATCH, *input_size, generator=gen)


def _write_onnx(
    model: nn.Module, example: torch.Tensor, tmp: Path, meta: dict[str, str], opset: int | None
) -> int:
    """Export to `tmp` (one file, weights inside); returns the opset written."""
    require("onnxscript", "ONNX export")
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as err:
        gist = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
        raise CnnbenchError(
            f"ONNX export failed ({err.__class__.__name__}: {gist[:300]}); try --format torchscript"
        ) from err
    written = int(program.model.opset_imports.get("", 0))
    if opset is not None and written != opset:
        raise CnnbenchError(
            f"--opset {opset}: the exporter could not convert this model to opset {opset} "
            f"(it can write opset {written}); use --opset {written} or higher, or leave it out"
        )
    program.model.metadata_props.update(meta)
    program.save(str(tmp), external_data=False)
    return written


def _onnx_logits(
    path: Path, batches: list[torch.Tensor]
) -> tuple[list[np.ndarray], dict[str, str]]:
    """The exported model's logits for `batches` (onnxruntime), and its metadata."""
    session = OnnxClassifier(path, need_metadata=False)
    return [session.logits(x.numpy()) for x in batches], session.metadata


def _write_torchscript(model: nn.Module, tmp: Path, meta: dict[str, str]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
            scripted = torch.jit.script(model)
            torch.jit.save(scripted, str(tmp), _extra_files=meta)
    except Exception as err:
        gist = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
        raise CnnbenchError(f"TorchScript export failed ({gist[:300]}); try --format onnx") from err


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """A TorchScript export and its metadata (the _extra_files)."""
    extra = dict.fromkeys(METADATA_FIELDS, "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    meta = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in extra.items()}
    return module.eval(), meta


def _torchscript_logits(
    path: Path, batches: list[torch.Tensor]
) -> tuple[list[np.ndarray], dict[str, str]]:
    """The reloaded TorchScript module's logits for `batches`, and its metadata."""
    module, meta = load_torchscript(path)
    with torch.no_grad():
        return [module(x).float().numpy() for x in batches], meta


@torch.no_grad()
def export_model(
    model: nn.Module,
    input_size: tuple[int, int, int],
    metadata: dict[str, str],
    out: Path,
    fmt: str = "onnx",
    opset: int | None = None,
    atol: float = ATOL,
    seed: int = 0,
) -> ExportedModel:
    """Export `model` (fp32, eval mode, CPU) to `out` and check it against PyTorch.

    The same random batch (of 3, then its first image alone: the batch axis is dynamic) goes
    through `model` and through the exported file (onnxruntime, or the reloaded TorchScript
    module); when the largest absolute logit difference is `atol` or more, nothing is left
    at `out` and the error gives the figure.
    """
    if fmt not in FORMATS:
        raise CnnbenchError(f"--format {fmt}: valid formats are {', '.join(FORMATS)}")
    start = time.perf_counter()
    model = model.float().cpu().eval()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CnnbenchError(f"cannot write {out}: {err.strerror or err}") from None
    tmp = out.with_name(f".{out.name}.export.tmp")
    x = _check_inputs(input_size, seed)
    batches = [x, x[:1].clone()]
    try:
        written = None
        if fmt == "onnx":
            written = _write_onnx(model, x[:2].clone(), tmp, metadata, opset)
            exported, read_back = _onnx_logits(tmp, batches)
        else:
            _write_torchscript(model, tmp, metadata)
            exported, read_back = _torchscript_logits(tmp, batches)
        diff = max(
            _max_abs_diff(model(b).float().numpy(), e)
            for b, e in zip(batches, exported, strict=True)
        )
        if not diff < atol:
            raise CnnbenchError(
                f"the {fmt} export does not match PyTorch: max abs logit difference {diff:.3g} "
                f"on random batches of {CHECK_BATCH} and 1 (limit {atol:g}); nothing was written"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return ExportedModel(out, fmt, diff, CHECK_BATCH, seconds, read_back, written)


def _max_abs_diff(expected: np.ndarray, got: np.ndarray) -> float:
    if expected.shape != got.shape:
        raise CnnbenchError(
            f"the export returns logits of shape {list(got.shape)} for a batch that gives "
            f"{list(expected.shape)} in PyTorch"
        )
    return float(np.abs(expected.astype(np.float64) - got.astype(np.float64)).max())


def default_out(run_dir: Path, fmt: str) -> Path:
    """RUN_DIR/export/model.onnx (or model.torchscript.pt)."""
    return Path(run_dir) / "export" / f"model{SUFFIXES[fmt]}"


def export_run(
    run_dir: Path,
    fmt: str = "onnx",
    out: Path | None = None,
    opset: int | None = None,
    atol: float = ATOL,
) -> tuple[ExportedModel, dict[str, str]]:
    """Export a run's best.pt with its metadata; returns the result and the metadata."""
    if fmt not in FORMATS:
        raise CnnbenchError(f"--format {fmt}: valid formats are {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise CnnbenchError("--opset applies to --format onnx only")
    if fmt == "onnx":
        require("onnx", "ONNX export")
        require("onnxruntime", "checking the ONNX export")
    run_dir = Path(run_dir).expanduser().resolve()
    cfg_hash = config_hash(run_dir)
    ckpt = load_best(run_dir)
    mean, std = normalization(run_dir, ckpt)
    metadata = export_metadata(ckpt, mean, std, cfg_hash)
    model = model_from_checkpoint(ckpt, torch.device("cpu"))
    channels, height, width = (int(v) for v in ckpt["input_size"])
    out = Path(out) if out else default_out(run_dir, fmt)
    if out.is_dir():
        raise CnnbenchError(
            f"--out {out} is a directory; give a file name, e.g. {out}/model{SUFFIXES[fmt]}"
        )
    size = (channels, height, width)
    return export_model(model, size, metadata, out, fmt, opset, atol), metadata


def is_exported_file(path: Path) -> bool:
    """True for a file given where a run dir is expected (cnnbench predict): an .onnx export."""
    return Path(path).is_file()


def _parse_metadata(props: dict[str, str], source: Path) -> dict[str, Any]:
    missing = [k for k in METADATA_KEYS if k not in props]
    if missing:
        raise CnnbenchError(
            f"{source} has no cnnbench metadata ({', '.join(missing)} missing): "
            "it was not written by `cnnbench export`; export the run with cnnbench export RUN_DIR"
        )
    try:
        return dict(
            model_name=props["model_name"],
            classes=[str(c) for c in json.loads(props["classes"])],
            input_size=tuple(int(v) for v in json.loads(props["input_size"])),
            mean=[float(v) for v in json.loads(props["mean"])],
            std=[float(v) for v in json.loads(props["std"])],
            config_hash=props.get("config_hash", ""),
        )
    except (ValueError, TypeError) as err:
        raise CnnbenchError(f"{source} has unreadable cnnbench metadata: {err}") from None


class OnnxClassifier:
    """An exported .onnx model run by onnxruntime; needs no torch model code.

    `classifier(images)` takes a uint8 batch (N x C x H x W, already at `input_size`) and
    returns class probabilities (N x classes, float32); `logits(x)` takes the normalized
    float batch. `classes`, `input_size`, `mean`, `std` and `config_hash` come from the
    file's metadata.
    """

    def __init__(self, path: Path, need_metadata: bool = True) -> None:
        self.path = Path(path)
        if need_metadata and self.path.suffix.lower() != ".onnx":
            raise CnnbenchError(
                f"{self.path} is not an .onnx file: give a run dir (with best.pt) or an .onnx "
                "file written by `cnnbench export RUN_DIR`"
            )
        ort = require("onnxruntime", "running an .onnx model")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            raise CnnbenchError(f"onnxruntime cannot load {self.path}: {err}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if need_metadata:
            meta = _parse_metadata(self.metadata, self.path)
            self.classes: list[str] = meta["classes"]
            self.input_size: tuple[int, int, int] = meta["input_size"]
            self.mean: list[float] = meta["mean"]
            self.std: list[float] = meta["std"]
            self.config_hash: str = meta["config_hash"]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits for a normalized float batch (N x C x H x W)."""
        batch = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: batch})[0]

    def torch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """`logits` for a torch batch (any device), as a CPU tensor: a drop-in for the model."""
        return torch.from_numpy(self.logits(x.detach().float().cpu().numpy()))

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x C x H x W -> (x / 255 - mean) / std, float32."""
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        return np.asarray(images, dtype=np.float32) * (1.0 / (255.0 * std)) - mean / std

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities (softmax of the logits) for a uint8 batch."""
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        if tuple(images.shape[1:]) != tuple(self.input_size):
            raise CnnbenchError(
                f"{self.path} takes N x {' x '.join(map(str, self.input_size))} uint8 batches, "
                f"got {' x '.join(map(str, images.shape))}"
            )
        logits = self.logits(self.normalize(images)).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

"""cnnbench export: a run's best.pt as an ONNX (or TorchScript) file, checked on export.

    cnnbench export outputs/2026-11-23/12-00-00 [--format onnx|torchscript] [--out FILE]

The file holds the weights, a dynamic batch axis and the metadata needed to use it (classes,
input size, mean/std, the run's config hash); see cnnbench/export.py. `cnnbench predict
FILE.onnx IMAGES...` runs it with onnxruntime.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CnnbenchError, user_errors
from ..export import ATOL, FORMATS, SUFFIXES, export_run


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnbench export",
        description=(
            "Export RUN_DIR/best.pt to ONNX (default) or TorchScript with its classes, input "
            "size, mean/std and config hash as metadata. The export is checked: a random batch "
            "goes through PyTorch and the exported model, and the max abs logit difference "
            f"must stay under --atol (default {ATOL:g}). ONNX needs: pip install "
            "'cnnbench[export]'."
        ),
    )
    parser.add_argument("run_dir", type=Path, help="a run dir (outputs/DATE/TIME)")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="default onnx")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"output file (default RUN_DIR/export/model{SUFFIXES['onnx']}, "
        f"or model{SUFFIXES['torchscript']})",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 20)")
    parser.add_argument(
        "--atol", type=float, default=ATOL, help=f"max abs logit difference (default {ATOL:g})"
    )
    return parser.parse_args(args)


def _short(values: str) -> str:
    """A JSON list of floats at 4 decimals, for the screen."""
    return "[" + ", ".join(f"{v:.4f}" for v in json.loads(values)) + "]"


def run_cli(args: list[str]) -> None:
    opts = parse_args(args)
    with user_errors():
        if not opts.run_dir.is_dir():
            raise CnnbenchError(
                f"{opts.run_dir} is not a run directory; pass a run dir such as "
                "outputs/DATE/TIME (one with best.pt)"
            )
        if opts.atol <= 0:
            raise CnnbenchError(f"--atol {opts.atol:g} must be > 0 (default {ATOL:g})")
        result, meta = export_run(opts.run_dir, opts.format, opts.out, opts.opset, opts.atol)
    size_mb = result.path.stat().st_size / 1e6
    opset = f", opset {result.opset}" if result.opset else ""
    checker = "onnxruntime" if result.format == "onnx" else "the reloaded TorchScript module"
    classes = json.loads(meta["classes"])
    print(
        f"exported {meta['model_name']} ({result.format}{opset}, {size_mb:.1f} MB) to "
        f"{result.path}\n"
        f"input: images N x {' x '.join(map(str, json.loads(meta['input_size'])))} float32 "
        f"(N dynamic), normalized with mean {_short(meta['mean'])} std {_short(meta['std'])}; "
        f"output: logits N x {len(classes)}\n"
        f"check: max abs logit difference PyTorch vs {checker} {result.max_abs_diff:.3g} "
        f"(limit {opts.atol:g}) on random batches of {result.batch} and 1\n"
        f"config hash {meta['config_hash'][:16]}, best epoch {meta['epoch']}, "
        f"{result.seconds:.1f} s"
    )

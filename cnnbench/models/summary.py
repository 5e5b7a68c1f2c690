"""The one place torchsummary is called: always with the model's own device and input size."""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn
from torchsummary import summary as _torchsummary


def summary_table(model: nn.Module, input_size: tuple[int, int, int], device: torch.device) -> str:
    """torchsummary's table as text, without disturbing RNG streams or BatchNorm statistics."""
    was_training = model.training
    buf = io.StringIO()
    devices = [device] if device.type == "cuda" else []
    try:
        model.eval()
        with (
            torch.random.fork_rng(devices=devices),
            torch.no_grad(),
            contextlib.redirect_stdout(buf),
        ):
            # torchsummary defaults to device="cuda"; pass ours explicitly.
            _torchsummary(
                model, tuple(input_size), device="cuda" if device.type == "cuda" else "cpu"
            )
    finally:
        model.train(was_training)
    return buf.getvalue()

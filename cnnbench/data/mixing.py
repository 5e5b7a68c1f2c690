"""MixUp and CutMix: the label-aware last step of the training loader.

As torchvision's v2.MixUp / v2.CutMix on a batch (and v2.RandomChoice between them when both
are on): one lambda ~ Beta(alpha, alpha) per batch, each image mixed with the one before it
(`roll(1, 0)`), the labels turned into soft targets mixed the same way. The loss
(nn.CrossEntropyLoss) takes them as class probabilities; label smoothing still applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def beta(alpha: float, gen: torch.Generator | None) -> float:
    """One draw of Beta(alpha, alpha) from `gen` (torch's own Beta sampler: a Dirichlet)."""
    concentration = torch.tensor([alpha, alpha], dtype=torch.float64)
    return float(torch._sample_dirichlet(concentration, generator=gen)[0])


def cutmix_box(lam: float, height: int, width: int, gen) -> tuple[int, int, int, int]:
    """CutMix's box (x1, y1, x2, y2) for `lam`: a uniform centre, sides sqrt(1 - lam) of the
    image's, clipped at the borders (v2.CutMix.make_params)."""
    r_x = int(torch.randint(width, (), generator=gen))
    r_y = int(torch.randint(height, (), generator=gen))
    r = 0.5 * math.sqrt(1.0 - lam)
    r_w_half, r_h_half = int(r * width), int(r * height)
    x1, y1 = max(r_x - r_w_half, 0), max(r_y - r_h_half, 0)
    return x1, y1, min(r_x + r_w_half, width), min(r_y + r_h_half, height)


def mix_labels(y: torch.Tensor, lam: float, num_classes: int) -> torch.Tensor:
    """Soft targets: one-hot(y) * lam + one-hot(y rolled by one) * (1 - lam)."""
    target = F.one_hot(y, num_classes).float()
    return target.roll(1, 0).mul_(1.0 - lam).add_(target.mul(lam))


@dataclass(frozen=True)
class MixUpCutMix:
    """transforms.mixup_alpha / cutmix_alpha (0: off): (batch, labels) -> (mixed batch,
    N x num_classes soft targets); both on: one of the two per batch, with equal chance."""

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    @classmethod
    def from_config(cls, tcfg: Any, num_classes: int | None) -> MixUpCutMix | None:
        if tcfg.mixup_alpha <= 0 and tcfg.cutmix_alpha <= 0:
            return None
        if num_classes is None:
            from ..errors import CnnbenchError

            raise CnnbenchError(
                "transforms.mixup_alpha/cutmix_alpha need the number of classes for their soft "
                "targets; pass num_classes to build_transforms"
            )
        return cls(num_classes, float(tcfg.mixup_alpha), float(tcfg.cutmix_alpha))

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cutmix = self.cutmix_alpha > 0
        if cutmix and self.mixup_alpha > 0:
            cutmix = bool(torch.randint(2, (), generator=gen) == 1)  # RandomChoice([MixUp, CutMix])
        if not cutmix:
            lam = beta(self.mixup_alpha, gen)
            mixed = x.roll(1, 0).mul_(1.0 - lam).add_(x.mul(lam))
            return mixed, mix_labels(y, lam, self.num_classes)
        h, w = x.shape[-2:]
        x1, y1, x2, y2 = cutmix_box(beta(self.cutmix_alpha, gen), h, w, gen)
        out = x.clone()
        out[..., y1:y2, x1:x2] = x[..., y1:y2, x1:x2].roll(1, 0)
        lam = 1.0 - (x2 - x1) * (y2 - y1) / (w * h)  # the share of the image left as it was
        return out, mix_labels(y, lam, self.num_classes)

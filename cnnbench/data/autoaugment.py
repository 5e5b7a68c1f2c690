"""AutoAugment, RandAugment, TrivialAugmentWide and ColorJitter on a batch, drawn per image.

torchvision's v2 transforms draw one op and one magnitude per call, so a call on a whole batch
would give every image the same. Here each image draws its own (op, magnitude bin, sign) from
the batch's generator, with torchvision's augmentation spaces and AutoAugment policies (read
from torchvision itself: one definition). Then each op runs once, on the images that drew it,
with their magnitudes as a tensor (`apply_ops`). The kernels reproduce
torchvision.transforms.v2.functional on uint8 images (nearest interpolation, fill 0, as
torchvision's defaults); tests/test_transforms.py compares them image by image.

A round of ops is (op ids, magnitudes): one entry per image, ids into `OPS`, magnitudes as
torchvision passes them to its functional ops (signed; factors are 1 + magnitude).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
IDENTITY = 0
POLICIES = ("trivial", "rand", "cifar10", "imagenet", "svhn")
Round = tuple[torch.Tensor, torch.Tensor]  # (op ids: n long, magnitudes: n float64), on the CPU


def augmentation_space(policy: str) -> dict[str, tuple[Callable, bool]]:
    """torchvision's {op: (magnitude bins(num_bins, height, width), signed)} of a policy."""
    from torchvision.transforms import v2

    kinds = {"trivial": v2.TrivialAugmentWide, "rand": v2.RandAugment}
    return kinds.get(policy, v2.AutoAugment)._AUGMENTATION_SPACE


def auto_augment_policies(policy: str) -> list:
    """AutoAugment's sub-policies for cifar10/imagenet/svhn: pairs of (op, probability, bin)."""
    from torchvision.transforms import v2

    return v2.AutoAugment(v2.AutoAugmentPolicy(policy))._policies


@dataclass(frozen=True)
class OpTable:
    """An augmentation space at one image size: per op its id in OPS, whether its magnitude
    is signed, and its magnitude per bin (0 for ops without one)."""

    ops: torch.Tensor  # k, long
    signed: torch.Tensor  # k, bool
    magnitudes: torch.Tensor  # k x bins, float64

    @classmethod
    def build(cls, policy: str, num_bins: int, height: int, width: int) -> OpTable:
        space = augmentation_space(policy)
        magnitudes = torch.zeros(len(space), num_bins, dtype=torch.float64)
        for row, (bins, _) in enumerate(space.values()):
            values = bins(num_bins, height, width)
            if values is not None:
                magnitudes[row] = values.double()
        return cls(
            torch.tensor([OPS.index(name) for name in space]),
            torch.tensor([signed for _, signed in space.values()]),
            magnitudes,
        )

    def row(self, name: str) -> int:
        return int((self.ops == OPS.index(name)).nonzero()[0])

    def magnitude(self, rows: torch.Tensor, bins: torch.Tensor, gen) -> torch.Tensor:
        """Magnitudes of (row, bin) per image, negated with probability 1/2 where signed."""
        negative = torch.rand(len(rows), generator=gen) <= 0.5
        sign = torch.where(self.signed[rows] & negative, -1.0, 1.0).double()
        return self.magnitudes[rows, bins] * sign


# ---- draws: one round (or several) of (op, magnitude) per image


def trivial_augment_draws(n: int, height: int, width: int, gen) -> list[Round]:
    """TrivialAugmentWide: one op uniformly, one of 31 bins uniformly, a random sign."""
    table = OpTable.build("trivial", 31, height, width)
    rows = torch.randint(len(table.ops), (n,), generator=gen)
    bins = torch.randint(31, (n,), generator=gen)
    return [(table.ops[rows], table.magnitude(rows, bins, gen))]


def rand_augment_draws(
    n: int, height: int, width: int, gen, num_ops: int = 2, magnitude: int = 9
) -> list[Round]:
    """RandAugment: `num_ops` rounds, each op uniformly at bin `magnitude` of 31, random sign."""
    table = OpTable.build("rand", 31, height, width)
    rounds = []
    for _ in range(num_ops):
        rows = torch.randint(len(table.ops), (n,), generator=gen)
        bins = torch.full((n,), magnitude)
        rounds.append((table.ops[rows], table.magnitude(rows, bins, gen)))
    return rounds


def auto_augment_draws(n: int, height: int, width: int, gen, policy: str) -> list[Round]:
    """AutoAugment: a sub-policy uniformly, then each of its two ops with its probability at
    its bin of 10 (random sign where signed); an op not applied is Identity."""
    table = OpTable.build(policy, 10, height, width)
    policies = auto_augment_policies(policy)
    rows = torch.tensor([[table.row(op) for op, _, _ in pair] for pair in policies])
    probs = torch.tensor([[p for _, p, _ in pair] for pair in policies])
    bins = torch.tensor([[-1 if b is None else b for _, _, b in pair] for pair in policies])
    pick = torch.randint(len(policies), (n,), generator=gen)
    rounds = []
    for slot in range(2):
        row, bin_ = rows[pick, slot], bins[pick, slot].clamp_min(0)
        applied = torch.rand(n, generator=gen) <= probs[pick, slot]
        magnitudes = table.magnitude(row, bin_, gen)
        rounds.append((torch.where(applied, table.ops[row], IDENTITY), magnitudes))
    return rounds


def policy_draws(
    policy: str, n: int, height: int, width: int, gen, num_ops: int = 2, magnitude: int = 9
) -> list[Round]:
    """The rounds of ops of `policy` (one of POLICIES) for n images of height x width;
    `num_ops` and `magnitude` are RandAugment's."""
    if policy == "trivial":
        return trivial_augment_draws(n, height, width, gen)
    if policy == "rand":
        return rand_augment_draws(n, height, width, gen, num_ops, magnitude)
    return auto_augment_draws(n, height, width, gen, policy)


def color_jitter_draws(n: int, strength: float, gen) -> list[Round]:
    """ColorJitter(brightness=s, contrast=s, saturation=s): per image a factor of each uniform
    in [max(0, 1 - s), 1 + s], applied in a random order (three rounds)."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    order = torch.rand(n, 3, generator=gen).argsort(dim=1)  # a uniform permutation per image
    factors = low + (high - low) * torch.rand(n, 3, generator=gen)  # float32, as torchvision
    ids = torch.tensor([OPS.index("Brightness"), OPS.index("Contrast"), OPS.index("Color")])
    return [
        (ids[order[:, r]], factors.gather(1, order[:, r : r + 1]).squeeze(1).double() - 1.0)
        for r in range(3)
    ]


# ---- applying a round: each op once, on the images that drew it


def apply_rounds(x: torch.Tensor, rounds: list[Round]) -> torch.Tensor:
    for ops, magnitudes in rounds:
        x = apply_ops(x, ops, magnitudes)
    return x


def apply_ops(x: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """uint8 batch x with image i transformed by OPS[ops[i]] at magnitudes[i] (CPU tensors).

    Each op runs once on the images that drew it (the geometric ops share one warp, the
    blends one pass), then one gather puts the images back in order. The grouping happens on
    the CPU (no device sync); x itself is never modified.
    """
    if bool((ops == IDENTITY).all()):
        return x
    shared = [(torch.isin(ops, _ids(names)), kernel) for names, kernel in SHARED]
    alone = ~torch.stack([chosen for chosen, _ in shared]).any(0) & (ops != IDENTITY)
    groups = [(ops == IDENTITY, None), *shared]
    groups += [(ops == op, KERNELS[OPS[op]]) for op in ops[alone].unique().tolist()]
    parts, order = [], []
    for chosen, kernel in groups:
        rows = chosen.nonzero().flatten()
        if len(rows) == 0:
            continue
        part = x.index_select(0, rows.to(x.device, non_blocking=True))
        parts.append(part if kernel is None else kernel(part, ops[rows], magnitudes[rows]))
        order.append(rows)
    where = torch.empty(len(ops), dtype=torch.long)
    where[torch.cat(order)] = torch.arange(len(ops))  # image i is row where[i] of the parts
    return torch.cat(parts).index_select(0, where.to(x.device, non_blocking=True))


def _ids(names: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([OPS.index(name) for name in names])


def _per_image(values: torch.Tensor, like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return values.to(dtype).view(-1, 1, 1, 1).to(like.device, non_blocking=True)


# Geometric ops: torchvision's affine/rotate, an inverse matrix per image, nearest, fill 0.


def _inverse_affine(center, angle, translate, shear) -> torch.Tensor:
    """n x 2 x 3: _get_inverse_affine_matrix (scale 1) on float64 tensors, one per image."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear[0]), torch.deg2rad(shear[1])
    (cx, cy), (tx, ty) = center, translate
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def _warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Each image through its inverse affine matrix, as v2's _affine_grid and
    _apply_grid_transform (nearest, zeros outside), rounded back to uint8."""
    n, _, h, w = x.shape
    theta = matrices.float().to(x.device, non_blocking=True)
    base = torch.empty(1, h, w, 3, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=x.device))
    rows = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=x.device)
    base[..., 1].copy_(rows[:, None])
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], device=x.device)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta.transpose(1, 2).div(scale))
    out = F.grid_sample(x.float(), grid.view(n, h, w, 2), "nearest", "zeros", align_corners=False)
    return out.round_().to(torch.uint8)


GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _geometric(x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Each image's affine op, as v2's AutoAugment calls them: ShearX/Y as F.affine(shear=
    degrees(atan(m)), center=[0, 0]), TranslateX/Y as F.affine(translate=int(m)), Rotate as
    F.rotate(m) (an affine of -(m % 360) about the centre)."""
    h, w = x.shape[-2:]
    zero = torch.zeros_like(m)

    def where(name: str, value: torch.Tensor) -> torch.Tensor:
        return torch.where(ops == OPS.index(name), value, zero)

    shear = torch.rad2deg(torch.atan(m))
    corner = (ops == OPS.index("ShearX")) | (ops == OPS.index("ShearY"))
    center = (torch.where(corner, -w * 0.5, zero), torch.where(corner, -h * 0.5, zero))
    translate = (where("TranslateX", m.trunc()), where("TranslateY", m.trunc()))
    shears = (where("ShearX", shear), where("ShearY", shear))
    return _warp(x, _inverse_affine(center, where("Rotate", -(m % 360)), translate, shears))


# Color ops: v2's kernels with a factor (1 + m) per image.


def _gray(x: torch.Tensor) -> torch.Tensor:
    """v2's floored float grayscale of a uint8 batch (the image itself for one channel)."""
    if x.shape[1] == 1:
        return x.float()
    r, g, b = x.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1).floor_()


def _blends(x: torch.Tensor, ops: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Brightness, Color and Contrast, as v2's kernels: x * f + d * (1 - f) per image with
    f = 1 + m, d = 0 (brightness: x * f exactly), the floored grayscale (saturation; none on
    one channel: f = 1), or its mean (contrast); clamped, truncated to uint8."""
    color, contrast = ops == OPS.index("Color"), ops == OPS.index("Contrast")
    factor = torch.where(color & (x.shape[1] == 1), 1.0, 1.0 + m)
    gray = _gray(x)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
    color_, contrast_ = _per_image(color, x, torch.bool), _per_image(contrast, x, torch.bool)
    other = torch.where(color_, gray, torch.where(contrast_, mean, 0.0))
    ratio, rest = _per_image(factor, x), _per_image(1.0 - factor, x)  # (1 - f) in float64
    return torch.addcmul(x.mul(ratio), other, rest).clamp_(0, 255).to(torch.uint8)


def _sharpness(x, m):
    """adjust_sharpness: blend with a smoothed copy, borders kept. v2 smooths with the kernel
    [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 and rounds; here the 3x3 sum plus 4x the centre
    (an exact integer S) over 13: S / 13 is never within 1/26 of a half, so both round alike.
    """
    h, w = x.shape[-2:]
    if h <= 2 or w <= 2:
        return x
    out = x.to(torch.float32, copy=True)
    rows = out[..., :-2, :] + out[..., 1:-1, :] + out[..., 2:, :]
    inner = out[..., 1:-1, 1:-1]
    blurred = (rows[..., :-2] + rows[..., 1:-1]).add_(rows[..., 2:]).add_(inner, alpha=4.0)
    blurred = blurred.div_(13.0).round_()
    inner.addcmul_(blurred.sub_(inner), _per_image(1.0 - (1.0 + m), x))  # v2's alpha
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(x, m):
    bits = m.trunc().long()
    mask = (255 << (8 - bits)) & 255  # the top `bits` bits
    return x & _per_image(mask, x, torch.uint8)


def _solarize(x, m):
    """v2 inverts pixels >= 255 * m (compared as float32): for integers, >= its ceiling;
    x ^ 255 is the inverted pixel."""
    threshold = torch.ceil((255.0 * m).float()).clamp_(0, 256)
    flip = (x >= _per_image(threshold, x, torch.int16)).to(torch.uint8).mul_(255)
    return x.bitwise_xor(flip)


# Per-op kernels, (images, op ids, magnitudes) -> images; ops that share one kernel.
KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Sharpness": lambda x, ops, m: _sharpness(x, m),
    "Posterize": lambda x, ops, m: _posterize(x, m),
    "Solarize": lambda x, ops, m: _solarize(x, m),
    "AutoContrast": lambda x, ops, m: TF.autocontrast(x),  # batched in torchvision already
    "Equalize": lambda x, ops, m: TF.equalize(x),
    "Invert": lambda x, ops, m: TF.invert(x),
}
SHARED = (
    (GEOMETRIC, _geometric),
    (("Brightness", "Color", "Contrast"), _blends),
)

"""Batch pipelines: each preset's ops, pixel for pixel against torchvision's per-sample ops.

The references draw from a copy of the pipeline's generator in the order the pipeline must
(crop offsets, then flips), apply torchvision's functional ops image by image, and go
through the same fused normalize: the outputs must be equal, not close.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY, read_json
from omegaconf import OmegaConf
from scipy import stats as scipy_stats
from torchvision.transforms.v2 import functional as TF

from cnnbench.config import TransformsConfig, check_values, compose_checked
from cnnbench.data import BatchTransform, ImageTensors, TensorLoader, build_transforms
from cnnbench.data.autoaugment import (
    IDENTITY,
    OPS,
    OpTable,
    apply_ops,
    color_jitter_draws,
    policy_draws,
)
from cnnbench.data.mixing import MixUpCutMix, beta, cutmix_box
from cnnbench.data.transforms import (
    AutoAugment,
    BatchOp,
    CenterCrop,
    ColorJitter,
    RandomCropFlip,
    RandomErasing,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    erasing_boxes,
    pipeline_ops,
    random_resized_crop,
)
from cnnbench.engine import Meter
from cnnbench.errors import CnnbenchError

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def pipelines(*overrides: str) -> tuple[BatchTransform, BatchTransform]:
    return build_transforms(compose_checked(list(overrides)).transforms, (MEAN, STD), 3)


def per_sample(x: torch.Tensor, fn: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return torch.stack([fn(i, img) for i, img in enumerate(x)])


def flipped(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return per_sample(x, lambda i, img: TF.horizontal_flip(img) if flip[i] else img)


def check(tf: BatchTransform, x: torch.Tensor, seed: int, reference: Callable) -> None:
    """tf(x) == normalize(reference(x, gen)), and both consumed the same draws."""
    gen, ref_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    out = tf(x, gen)
    expected = tf.normalize(reference(x, ref_gen))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(gen.get_state(), ref_gen.get_state())  # no extra or missing draws
    assert tuple(out.shape[-2:]) == tf.output_size(*x.shape[-2:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cifar_is_randomcrop_pad_4_then_hflip(seed):
    train_tf, eval_tf = pipelines("transforms=cifar")
    assert train_tf.ops == (RandomCropFlip(None, 4, True),)  # one gather, on uint8

    def reference(x, gen):
        top, left = (torch.randint(0, 9, (len(x),), generator=gen) for _ in range(2))
        flip = torch.rand(len(x), generator=gen) < 0.5
        crops = per_sample(
            x, lambda i, img: TF.crop(TF.pad(img, [4]), int(top[i]), int(left[i]), 32, 32)
        )
        return flipped(crops, flip)

    check(train_tf, images(64, 32, seed), seed, reference)
    assert eval_tf.ops == ()


@pytest.mark.parametrize("seed", [0, 1])
def test_random_crop_smaller_than_the_image_without_padding(seed):
    train_tf, eval_tf = pipelines("transforms=basic", "transforms.crop=24")

    def reference(x, gen):
        top, left = (torch.randint(0, 9, (len(x),), generator=gen) for _ in range(2))
        return per_sample(x, lambda i, img: TF.crop(img, int(top[i]), int(left[i]), 24, 24))

    check(train_tf, images(32, 32, seed), seed, reference)
    check(eval_tf, images(8, 32, seed), seed, lambda x, gen: TF.center_crop(x, [24, 24]))


@pytest.mark.parametrize("seed", [0, 1])
def test_hflip_after_a_center_crop(seed):
    train_tf, _ = pipelines(
        "transforms=basic",
        "transforms.crop=20",
        "transforms.crop_mode=center",
        "transforms.hflip=true",
    )
    assert train_tf.ops == (CenterCrop(20), RandomHorizontalFlip())

    def reference(x, gen):
        return flipped(TF.center_crop(x, [20, 20]), torch.rand(len(x), generator=gen) < 0.5)

    check(train_tf, images(32, 32, seed), seed, reference)


def test_imagenet227_resizes_center_crops_and_flips():
    train_tf, eval_tf = pipelines("transforms=imagenet227")
    assert train_tf.ops == (Resize(256), CenterCrop(227), RandomHorizontalFlip())
    assert eval_tf.ops == (Resize(256), CenterCrop(227))

    def resized(x):
        return per_sample(x.float(), lambda i, img: TF.resize(img, [256, 256], antialias=True))

    def reference(x, gen):
        crops = TF.center_crop(resized(x), [227, 227])
        return flipped(crops, torch.rand(len(x), generator=gen) < 0.5)

    x = images(4, 300)
    check(train_tf, x, 0, reference)
    check(eval_tf, x, 0, lambda x, gen: TF.center_crop(resized(x), [227, 227]))


def test_rrc224_draws_the_crops_then_the_flips():
    train_tf, eval_tf = pipelines("transforms=rrc224")
    assert train_tf.ops == (
        Resize(256),
        RandomResizedCrop(224, (0.5, 1.0), (3 / 4, 4 / 3)),
        RandomHorizontalFlip(),
    )
    assert eval_tf.ops == (Resize(256), CenterCrop(224))

    def reference(x, gen):  # images stored at 256: the resize passes them through
        crops = random_resized_crop(x.float(), 224, 224, (0.5, 1.0), (3 / 4, 4 / 3), gen)
        return flipped(crops, torch.rand(len(x), generator=gen) < 0.5)

    for seed in (0, 1):
        check(train_tf, images(6, 256, seed), seed, reference)


def test_resize_preset_resamples_only_other_sizes():
    train_tf, eval_tf = pipelines("transforms=resize", "transforms.resize=48")
    assert train_tf.ops == eval_tf.ops == (Resize(48),)

    def reference(x, gen):
        return per_sample(x.float(), lambda i, img: TF.resize(img, [48, 48], antialias=True))

    check(train_tf, images(4, 32), 0, reference)
    x = images(4, 48)
    assert train_tf.ops[0](x, None) is x  # at size already: stays uint8
    check(train_tf, x, 0, lambda x, gen: x)


def test_normalize_only_pipeline_is_x_over_255_standardized():
    tf = BatchTransform(train=False, mean=MEAN, std=STD)
    x = images(5, 8)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert tf.ops == () and tf.mean == MEAN and tf.std == STD
    torch.testing.assert_close(tf(x), (x.float() / 255 - mean) / std)


@pytest.mark.parametrize(
    "preset",
    ["basic", "cifar", "imagenet227", "rrc224", "resize", "cifar_strong", "imagenet_strong"],
)
def test_eval_pipelines_hold_no_augmentation(preset):
    train_tf, eval_tf = pipelines(f"transforms={preset}")
    assert train_tf.train and not eval_tf.train
    assert not any(op.train_only for op in eval_tf.ops)
    assert eval_tf.output_size(256, 256) == train_tf.output_size(256, 256)


def test_a_new_op_gets_floats_when_it_asks_and_its_size_is_counted():
    seen = []

    class Shrink(BatchOp):
        needs_float = True

        def output_size(self, height, width):
            return height // 2, width // 2

        def __call__(self, x, gen):
            seen.append(x.dtype)
            return x[..., ::2, ::2]

    tcfg = OmegaConf.structured(TransformsConfig(name="t", crop=6, crop_padding=1))
    ops = [*pipeline_ops(tcfg, train=True), Shrink()]
    tf = BatchTransform(ops, train=True, mean=[0.0] * 3, std=[1 / 255] * 3)
    out = tf(images(2, 8), torch.Generator().manual_seed(0))
    assert seen == [torch.float32] and out.shape == (2, 3, 3, 3) == (2, 3, *tf.output_size(8, 8))


# ---------------------------------------------------------------- policies, color, erasing, mixing
#
# Kernels: an op applied by the batched path, each image with its own magnitude, equals
# torchvision's per-image result for that op and magnitude (v2's mapping from a magnitude to
# its functional call, nearest, fill None) exactly, on this CPU.
# Draws: two-sample tests against torchvision's own per-sample transforms, with fixed seeds.

SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"} | {
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
}


def edge_case_images(n: int, channels: int, h: int = 20, w: int = 28) -> torch.Tensor:
    """Noise (non-square), plus flat images, a low-contrast one and a two-level one."""
    x = images(n, max(h, w))[:, :channels, :h, :w].contiguous()
    x[0], x[1] = 0, 255
    x[2] = x[2] // 16 + 100
    x[3] = torch.where(x[3] > 127, 200, 50).to(torch.uint8)
    return x


def torchvision_op(img: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    from torchvision.transforms import v2

    tv = v2.AutoAugment()  # the same mapping in all of v2's policies
    nearest = v2.InterpolationMode.NEAREST
    return tv._apply_image_or_video_transform(img, op, magnitude, nearest, {"others": None})


def magnitudes_for(ops: torch.Tensor, h: int, w: int, seed: int) -> torch.Tensor:
    """A magnitude per image for its op: one of the op's bins in torchvision's spaces (wide,
    standard, AutoAugment's 10), negated half the time where signed; bits 0..8 for Posterize."""
    gen = torch.Generator().manual_seed(seed)
    tables = [OpTable.build("trivial", 31, h, w), OpTable.build("rand", 31, h, w)]
    tables.append(OpTable.build("cifar10", 10, h, w))
    out = torch.zeros(len(ops), dtype=torch.float64)
    for i, op in enumerate(ops.tolist()):
        values = torch.cat([t.magnitudes[t.row(OPS[op])] for t in tables if op in t.ops])
        out[i] = values[torch.randint(len(values), (), generator=gen)]
        if OPS[op] in SIGNED and torch.rand((), generator=gen) < 0.5:
            out[i] = -out[i]
        if OPS[op] == "Posterize":
            out[i] = float(torch.randint(9, (), generator=gen))
    return out


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("op", OPS[1:])
def test_each_op_equals_torchvision_per_image_at_its_own_magnitude(op, channels):
    x = edge_case_images(24, channels)
    ops = torch.full((len(x),), OPS.index(op))
    magnitudes = magnitudes_for(ops, 20, 28, seed=OPS.index(op))
    before = x.clone()
    out = apply_ops(x, ops, magnitudes)
    expected = torch.stack(
        [torchvision_op(img, op, float(m)) for img, m in zip(x, magnitudes, strict=True)]
    )
    assert out.dtype == torch.uint8 and torch.equal(out, expected)
    assert torch.equal(x, before)  # the input batch is never modified


def test_a_batch_of_mixed_ops_equals_torchvision_image_by_image():
    x = edge_case_images(96, 3, 32, 32)
    ops = torch.randint(len(OPS), (len(x),), generator=torch.Generator().manual_seed(0))
    magnitudes = magnitudes_for(ops, 32, 32, seed=1)
    out = apply_ops(x, ops, magnitudes)
    for img, got, op, m in zip(x, out, ops.tolist(), magnitudes.tolist(), strict=True):
        assert torch.equal(got, torchvision_op(img, OPS[op], m)), (OPS[op], m)


def recorded_programs(transform: Any, n: int, h: int, w: int) -> list[tuple]:
    """torchvision's per-sample draws: the (op, magnitude) calls of `transform` on n images."""
    calls: list = []

    def record(image, transform_id, magnitude, interpolation, fill):
        calls.append((transform_id, magnitude))
        return image

    transform._apply_image_or_video_transform = record
    torch.manual_seed(0)
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    programs = []
    for _ in range(n):
        calls.clear()
        transform(img)
        programs.append(tuple(calls))
    return programs


def our_programs(rounds: list, skip_identity: bool) -> list[tuple]:
    per_image = zip(
        *[zip(ops.tolist(), mags.tolist(), strict=True) for ops, mags in rounds], strict=True
    )
    return [
        tuple((OPS[op], m) for op, m in image if not (skip_identity and op == IDENTITY))
        for image in per_image
    ]


def same_distribution(a: list, b: list) -> float:
    """p-value of a chi-square test that two samples of categories share one distribution
    (categories seen fewer than 10 times in both samples together are pooled)."""
    ca, cb = Counter(a), Counter(b)
    keys = sorted(set(ca) | set(cb), key=repr)
    table = np.array([[ca[k] for k in keys], [cb[k] for k in keys]])
    rare = table.sum(0) < 10
    table = np.concatenate([table[:, ~rare], table[:, rare].sum(1, keepdims=True)], 1)
    return scipy_stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue


@pytest.mark.parametrize(
    "policy,torchvision_transform",
    [
        ("trivial", lambda v2: v2.TrivialAugmentWide()),
        ("rand", lambda v2: v2.RandAugment(num_ops=2, magnitude=9)),
        ("cifar10", lambda v2: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)),
        ("imagenet", lambda v2: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)),
        ("svhn", lambda v2: v2.AutoAugment(v2.AutoAugmentPolicy.SVHN)),
    ],
)
def test_policy_draws_follow_torchvision_per_sample(policy, torchvision_transform):
    from torchvision.transforms import v2

    n, h, w = 6000, 24, 40
    transform = torchvision_transform(v2)
    theirs = recorded_programs(transform, n, h, w)
    rounds = policy_draws(policy, n, h, w, torch.Generator().manual_seed(0))
    ours = our_programs(rounds, skip_identity=policy not in ("trivial", "rand"))
    # Every (op, magnitude) we draw is in torchvision's space (its bins, both signs if signed).
    space, bins = type(transform)._AUGMENTATION_SPACE, 31 if policy in ("trivial", "rand") else 10
    allowed = {
        (op, sign * float(value))
        for op, (magnitudes, signed) in space.items()
        for value in (magnitudes(bins, h, w) if magnitudes(bins, h, w) is not None else [0.0])
        for sign in ((1, -1) if signed else (1,))
    }
    assert {call for program in ours for call in program} <= allowed
    # Per image: its whole program (ops, magnitudes, signs); the ops alone, more sharply.
    assert same_distribution(ours, theirs) > 0.001
    ops = [[op for p in programs for op, _ in p] for programs in (ours, theirs)]
    assert same_distribution(*ops) > 0.001
    assert len(rounds) == {"trivial": 1}.get(policy, 2)


def test_rand_augment_ops_and_magnitude_are_the_config_keys():
    from torchvision.transforms import v2

    tf, _ = pipelines("transforms=basic", "transforms.auto_augment=rand")
    tf3, _ = pipelines(
        "transforms=basic",
        "transforms.auto_augment=rand",
        "transforms.rand_ops=3",
        "transforms.rand_magnitude=20",
    )
    assert tf.ops == (AutoAugment("rand", 2, 9),) and tf3.ops == (AutoAugment("rand", 3, 20),)
    rounds = policy_draws("rand", 3000, 32, 32, torch.Generator(), num_ops=3, magnitude=20)
    theirs = recorded_programs(v2.RandAugment(num_ops=3, magnitude=20), 3000, 32, 32)
    ours = our_programs(rounds, skip_identity=False)
    assert len(rounds) == 3 and {len(p) for p in theirs} == {3}
    assert {abs(m) for p in ours for _, m in p} == {abs(m) for p in theirs for _, m in p}


@pytest.mark.parametrize("preset", ["cifar_strong", "basic transforms.auto_augment=imagenet"])
def test_the_policy_op_applies_its_draws_in_order(preset):
    """The pipeline = the draws replayed from the same generator, applied image by image by
    torchvision, after the crop and flip, then normalized."""
    overrides = [f"transforms={preset.split()[0]}", *preset.split()[1:], "transforms.erasing=0"]
    train_tf, eval_tf = pipelines(*overrides)
    policy = train_tf.ops[-1]
    assert isinstance(policy, AutoAugment) and eval_tf.ops == ()

    def reference(x, gen):
        x = train_tf.ops[0](x, gen) if len(train_tf.ops) > 1 else x  # cifar_strong: crop, flip
        rounds = policy_draws(policy.policy, len(x), 32, 32, gen)
        out = []
        for i, img in enumerate(x):
            for ops, mags in rounds:
                img = torchvision_op(img, OPS[int(ops[i])], float(mags[i]))
            out.append(img)
        return torch.stack(out)

    check(train_tf, images(48, 32), 0, reference)


def test_color_jitter_equals_torchvision_functionals_in_the_drawn_order():
    from torchvision.transforms import v2

    train_tf, _ = pipelines("transforms=basic", "transforms.color_jitter=0.4")
    assert train_tf.ops == (ColorJitter(0.4),)
    adjust = {"Brightness": TF.adjust_brightness, "Contrast": TF.adjust_contrast}
    adjust["Color"] = TF.adjust_saturation

    def reference(x, gen):
        rounds = color_jitter_draws(len(x), 0.4, gen)
        out = []
        for i, img in enumerate(x):
            for ops, mags in rounds:
                img = adjust[OPS[int(ops[i])]](img, 1.0 + float(mags[i]))
            out.append(img)
        return torch.stack(out)

    check(train_tf, edge_case_images(32, 3), 0, reference)

    # Distribution: the order and the factors, against v2.ColorJitter's make_params.
    n = 4000
    rounds = color_jitter_draws(n, 0.4, torch.Generator().manual_seed(0))
    our_order = list(zip(*[[OPS[op] for op in ops.tolist()] for ops, _ in rounds], strict=True))
    factors = {OPS[int(ops[i])]: [] for ops, _ in rounds for i in range(3)}
    for ops, mags in rounds:
        for op, m in zip(ops.tolist(), mags.tolist(), strict=True):
            factors[OPS[op]].append(1.0 + m)
    jitter = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
    torch.manual_seed(0)
    params = [jitter.make_params([]) for _ in range(n)]
    names = {0: "Brightness", 1: "Contrast", 2: "Color"}
    their_order = [tuple(names[i] for i in p["fn_idx"].tolist() if i < 3) for p in params]
    assert len(set(our_order)) == 6 and same_distribution(our_order, their_order) > 0.001
    for op, key in zip(names.values(), ["brightness", "contrast", "saturation"], strict=True):
        theirs = [p[f"{key}_factor"] for p in params]
        assert min(factors[op]) >= 0.6 and max(factors[op]) <= 1.4
        assert scipy_stats.ks_2samp(factors[op], theirs).pvalue > 0.001, op


def test_random_erasing_zeroes_a_box_of_the_normalized_batch_as_torchvision():
    train_tf, _ = pipelines("transforms=cifar", "transforms.erasing=0.5")
    assert train_tf.ops[-1] == RandomErasing(0.5) and train_tf.after == (RandomErasing(0.5),)
    x = images(64, 32)
    gen, ref_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out = train_tf(x, gen)
    cropped = train_tf.ops[0](x, ref_gen)
    on = torch.rand(64, generator=ref_gen) < 0.5
    boxes = torch.stack(erasing_boxes(64, 32, 32, (0.02, 0.33), (0.3, 3.3), ref_gen), 1)
    expected = train_tf.normalize(cropped)  # torchvision's order: Normalize, then erase
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        if on[i]:
            expected[i] = TF.erase(expected[i], top, left, h, w, torch.tensor(0.0))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(gen.get_state(), ref_gen.get_state())
    erased = (out == 0).all(dim=1).flatten(1).any(dim=1)
    assert erased.tolist() == on.tolist()  # the mean colour, only where drawn


@pytest.mark.parametrize("hw", [(32, 32), (24, 64), (4, 5)])
def test_erasing_boxes_follow_torchvision_in_distribution(hw):
    from torchvision.transforms import v2

    n, (h, w) = 4000, hw
    top, left, bh, bw = erasing_boxes(n, h, w, (0.02, 0.33), (0.3, 3.3), torch.Generator())
    erasing = v2.RandomErasing(p=1.0)
    torch.manual_seed(0)
    params = [erasing.make_params([torch.zeros(3, h, w)]) for _ in range(n)]
    theirs = torch.tensor([[p["i"], p["j"], p["h"], p["w"]] for p in params if p["v"] is not None])
    ours = torch.stack([top, left, bh, bw], 1)[bh > 0]
    assert abs(len(ours) - len(theirs)) < 4 * (n * 0.25) ** 0.5 + 1  # how often a box fits
    if len(theirs) == 0:  # 4x5: no box fits in 10 tries, never erased
        assert len(ours) == 0
        return
    assert (ours[:, 2] < h).all() and (ours[:, 3] < w).all()
    assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    area = (ours[:, 2] * ours[:, 3]).double() / (h * w)
    their_area = (theirs[:, 2] * theirs[:, 3]).double() / (h * w)
    assert area.min() >= their_area.min() - 0.01 and area.max() <= their_area.max() + 0.01
    for k in range(4):
        assert scipy_stats.ks_2samp(ours[:, k], theirs[:, k]).pvalue > 0.001, k


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_is_beta_alpha_alpha(alpha):
    gen = torch.Generator().manual_seed(0)
    lams = [beta(alpha, gen) for _ in range(3000)]
    assert scipy_stats.kstest(lams, scipy_stats.beta(alpha, alpha).cdf).pvalue > 0.001


def test_cutmix_boxes_follow_torchvision_in_distribution():
    from torchvision.transforms import v2

    n, h, w = 3000, 24, 40
    gen = torch.Generator().manual_seed(0)
    ours = [cutmix_box(beta(1.0, gen), h, w, gen) for _ in range(n)]
    cutmix = v2.CutMix(alpha=1.0, num_classes=10)
    torch.manual_seed(0)
    theirs = [cutmix.make_params([torch.zeros(2, 3, h, w)])["box"] for _ in range(n)]
    for k in range(4):
        a, b = [box[k] for box in ours], [box[k] for box in theirs]
        assert scipy_stats.ks_2samp(a, b).pvalue > 0.001, k


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_batch_and_soft_targets_equal_torchvision(kind):
    from torchvision.transforms import v2

    mix = MixUpCutMix(10, **{f"{kind}_alpha": 1.0})
    x = torch.randn(16, 3, 24, 40)
    y = torch.randint(10, (16,), generator=torch.Generator().manual_seed(1))
    gen, ref_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out, target = mix(x, y, gen)
    lam = beta(1.0, ref_gen)
    if kind == "mixup":
        tv, params = v2.MixUp(alpha=1.0, num_classes=10), dict(lam=lam)
    else:
        x1, y1, x2, y2 = cutmix_box(lam, 24, 40, ref_gen)
        adjusted = 1.0 - (x2 - x1) * (y2 - y1) / (24 * 40)
        tv, params = (
            v2.CutMix(alpha=1.0, num_classes=10),
            dict(box=(x1, y1, x2, y2), lam_adjusted=adjusted),
        )
    tv.make_params = lambda flat_inputs: params
    expected_x, expected_y = tv(x, y)
    assert torch.equal(out, expected_x) and torch.equal(target, expected_y)
    assert target.shape == (16, 10) and torch.allclose(target.sum(1), torch.ones(16))


def test_with_both_on_each_batch_is_mixup_or_cutmix_with_equal_chance():
    mix = MixUpCutMix(4, mixup_alpha=1.0, cutmix_alpha=1.0)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    kinds = []
    for seed in range(400):
        out, _ = mix(x, y, torch.Generator().manual_seed(seed))
        # CutMix keeps some pixels exactly; MixUp (lambda in (0, 1)) blends all of them.
        kinds.append(bool((out == x).any()))
    assert abs(sum(kinds) - 200) < 4 * 10  # 4 sigma of Binomial(400, 1/2)


def test_the_loader_mixes_train_batches_only_and_resumes_with_the_same_draws():
    tcfg = compose_checked(
        ["transforms=cifar_strong", "transforms.mixup_alpha=0.2", "transforms.cutmix_alpha=1.0"]
    ).transforms
    train_tf, eval_tf = build_transforms(tcfg, (MEAN, STD), 3, num_classes=5)
    data = ImageTensors(images(40, 32), torch.arange(40) % 5)
    cpu = torch.device("cpu")
    train = TensorLoader(data, 8, train_tf, cpu, shuffle=True, seed=3)
    train.set_epoch(2)
    batches = list(train)
    assert all(y.shape == (8, 5) and y.dtype == torch.float32 for _, y in batches)
    assert all(torch.allclose(y.sum(1), torch.ones(8)) for _, y in batches)
    assert not torch.equal(batches[0][0], batches[1][0])
    train.set_epoch(2, start_step=3)  # a run resumed after step 3 sees the same batches 4, 5
    for (x, y), (x2, y2) in zip(batches[3:], train, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    (x, y), *_ = TensorLoader(data, 40, eval_tf, cpu, shuffle=False)
    assert torch.equal(y, data.labels) and torch.equal(x, eval_tf(data.images))  # plain


def test_meter_counts_soft_targets_against_their_dominant_class():
    meter = Meter(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.6, 0.4, 0.0], [0.0, 0.45, 0.55]])
    meter.update(torch.tensor(1.0), logits, soft, top5=False)
    assert meter.top1.item() == 2 and meter.seen == 3


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "transforms.rand_magnitude=31",
            "transforms.rand_magnitude must be a bin in 0..30 (got 31)",
        ),
        ("transforms.rand_ops=-1", "transforms.rand_ops must be >= 0 (got -1)"),
        ("transforms.erasing=1.5", "transforms.erasing is a probability in [0, 1] (got 1.5)"),
        ("transforms.mixup_alpha=-0.2", "transforms.mixup_alpha must be >= 0, 0 is off (got -0.2)"),
        ("transforms.color_jitter=nan", "transforms.color_jitter must be >= 0, 0 is off (got nan)"),
    ],
)
def test_bad_augmentation_values_stop_before_any_work(override, message):
    with pytest.raises(CnnbenchError, match=re.escape(message)):
        check_values(compose_checked([override]))


def test_an_unknown_policy_names_the_valid_ones():
    with pytest.raises(CnnbenchError) as err:
        compose_checked(["transforms.auto_augment=trivialaugment"])
    assert "transforms.auto_augment" in str(err.value)
    assert all(name in str(err.value) for name in ("trivial", "rand", "cifar10", "svhn"))


def test_strong_presets_add_the_policy_and_erasing_and_keep_eval_as_it_was():
    strong, strong_eval = pipelines("transforms=cifar_strong")
    plain, plain_eval = pipelines("transforms=cifar")
    assert strong.ops == (*plain.ops, AutoAugment("trivial"), RandomErasing(0.25))
    assert strong_eval.ops == plain_eval.ops == () and strong.mix is None
    net, net_eval = pipelines("transforms=imagenet_strong")
    assert net.ops == (
        Resize(256),
        RandomResizedCrop(224, (0.08, 1.0), (3 / 4, 4 / 3)),
        RandomHorizontalFlip(),
        AutoAugment("trivial"),
        RandomErasing(0.1),
    )
    assert net_eval.ops == (Resize(256), CenterCrop(224))
    out = net(images(4, 256), torch.Generator().manual_seed(0))  # RRC floats -> uint8 ops
    assert out.shape == (4, 3, 224, 224) and out.dtype == torch.float32


def test_mixing_without_a_class_count_is_a_clear_error():
    tcfg = compose_checked(["transforms.cutmix_alpha=1.0"]).transforms
    with pytest.raises(CnnbenchError, match="need the number of classes"):
        build_transforms(tcfg, (MEAN, STD), 3)


def test_training_with_every_augmentation_on_runs_and_counts_train_accuracy(cli, tmp_path):
    cli(
        "train",
        *TINY,
        "transforms=cifar_strong",
        "transforms.color_jitter=0.4",
        "transforms.mixup_alpha=0.2",
        "transforms.cutmix_alpha=1.0",
        "label_smoothing=0.1",
        "hydra.run.dir=run",
    )
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2
    for row in rows:
        assert math.isfinite(float(row["train_loss"])) and 0 <= float(row["train_acc"]) <= 1
    assert 0 <= read_json(tmp_path / "run" / "results.json")["test_top1"] <= 1


def test_show_titles_mixed_samples_with_both_classes():
    from cnnbench.commands.show import label_titles

    classes = ["cat", "dog", "fox"]
    soft = torch.tensor([[0.62, 0.38, 0.0], [0.0, 0.0, 1.0]])
    assert label_titles(soft, classes) == ["cat 62% dog 38%", "fox 100%"]
    assert label_titles(torch.tensor([2, 0]), classes) == ["fox", "cat"]


@pytest.mark.parametrize("policy,rows", [("trivial", 14), ("svhn", 10)])  # svhn: 10 ops used
def test_show_ops_draws_one_image_through_each_op_of_the_policy(
    tmp_path, monkeypatch, capsys, policy, rows
):
    from PIL import Image

    from cnnbench.commands import show

    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))
    args = ["dataset=fake", "dataset.size=40", "progress=false", "--out", str(tmp_path / "o.png")]
    show.run_cli([f"transforms.auto_augment={policy}", "--ops", *args])
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (7 * 200, rows * 220)  # 7 columns: the original, then magnitudes
    with pytest.raises(SystemExit) as err:
        show.run_cli(["--ops", *args])  # auto_augment=none: nothing to draw
    assert err.value.code == 1
    assert "error: --ops draws the ops of transforms.auto_augment, which is none" in (
        capsys.readouterr().err
    )

"""Batch pipelines: each preset's ops, pixel for pixel against torchvision's per-sample ops.

The references draw from a copy of the pipeline's generator in the order the pipeline must
(crop offsets, then flips), apply torchvision's functional ops image by image, and go
through the same fused normalize: the outputs must be equal, not close.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms.v2 import functional as TF

from cnnbench.config import TransformsConfig, compose_checked
from cnnbench.data import BatchTransform, build_transforms
from cnnbench.data.transforms import (
    BatchOp,
    CenterCrop,
    RandomCropFlip,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    pipeline_ops,
    random_resized_crop,
)

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


@pytest.mark.parametrize("preset", ["basic", "cifar", "imagenet227", "rrc224", "resize"])
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

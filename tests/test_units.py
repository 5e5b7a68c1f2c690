"""Public functions: models, transforms, statistics, checkpoints, device choices."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from cnnbench.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from cnnbench.config import TransformsConfig
from cnnbench.data import ImageTensors, TensorLoader, build_transforms, channel_stats
from cnnbench.data.transforms import BatchTransform, random_crop
from cnnbench.errors import CnnbenchError
from cnnbench.models import count_params, create_model


@pytest.mark.parametrize(
    "name,channels,classes,params",
    [("lenet5", 1, 10, 61_706), ("lenet5", 3, 10, 62_006), ("alexnet_cifar", 3, 10, 58_292_074)],
)
def test_param_counts_match_the_spec(name, channels, classes, params):
    model = create_model(name, classes, channels)
    assert count_params(model) == params
    out = model(torch.zeros(2, channels, 32, 32))
    assert out.shape == (2, classes)  # logits, one per class


def test_models_return_logits_not_probabilities():
    torch.manual_seed(0)
    out = create_model("lenet5", 10, 1)(torch.randn(4, 1, 32, 32) * 10)
    assert not torch.allclose(out.sum(1), torch.ones(4))
    assert (out < 0).any()


def test_channel_stats_of_known_images():
    images = torch.zeros(4, 2, 3, 3, dtype=torch.uint8)
    images[:2, 0] = 255  # channel 0: half the pixels white -> mean 0.5, std 0.5
    images[:, 1] = 51  # channel 1: constant 0.2 -> std 0
    mean, std = channel_stats(images, chunk=3)
    assert mean == pytest.approx([0.5, 0.2])
    assert std == pytest.approx([0.5, 0.0], abs=1e-6)


def test_eval_transform_is_deterministic_and_normalizes():
    tcfg = OmegaConf.structured(TransformsConfig(name="t", crop_padding=4, hflip=True))
    _, tf = build_transforms(tcfg, ([0.5], [0.25]), 1)
    assert tf.ops == () and not tf.train  # the crop and flip are train-only
    x = torch.full((3, 1, 8, 8), 255, dtype=torch.uint8)
    x[:, :, :, :4] = 0
    out = tf(x, torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 8, 8)
    assert torch.equal(out, tf(x, torch.Generator().manual_seed(1)))  # eval never augments
    assert out[0, 0, 0, 0].item() == pytest.approx(-2.0) and out[
        0, 0, 0, 7
    ].item() == pytest.approx(2.0)


def test_random_crop_shifts_within_the_padding():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = random_crop(x, 4, 4, 1, torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 4, 4)
    # Every crop is the original shifted by at most one pixel, zero-filled at the border.
    padded = torch.nn.functional.pad(x[0], (1, 1, 1, 1))
    shifts = {(i, j) for i in range(3) for j in range(3)}
    seen = set()
    for crop in out:
        match = [(i, j) for i, j in shifts if torch.equal(crop, padded[:, i : i + 4, j : j + 4])]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 9  # all shifts occur


def test_train_transform_flips_about_half():
    tcfg = OmegaConf.structured(TransformsConfig(name="t", hflip=True))
    train_tf, eval_tf = build_transforms(tcfg, ([0.0], [1.0]), 1)
    x = torch.zeros(1000, 1, 2, 2, dtype=torch.uint8)
    x[:, :, :, 0] = 255
    out = train_tf(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 1] > 0.5).float().mean().item()
    assert 0.4 < flipped < 0.6
    assert (eval_tf(x)[:, 0, 0, 0] == 1.0).all()


def test_tensor_loader_is_seeded_per_epoch():
    data = ImageTensors(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    tf = BatchTransform(train=True, mean=[0.0], std=[1.0 / 255])
    loader = TensorLoader(data, 4, tf, torch.device("cpu"), shuffle=True, seed=3)
    assert len(loader) == 3
    loader.set_epoch(1)
    first = torch.cat([y for _, y in loader])
    again = torch.cat([y for _, y in loader])
    loader.set_epoch(2)
    other = torch.cat([y for _, y in loader])
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(first.tolist()) == list(range(10))
    x, y = next(iter(loader))
    assert torch.equal(x.view(-1), y.float())  # images travel with their labels


def test_checkpoints_are_atomic_and_loaded_safely(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    assert load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp files left
    atomic_write_text(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CnnbenchError, match="refused to load"):
        load_checkpoint(evil)
    with pytest.raises(CnnbenchError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_nan_guard_message():
    from cnnbench.engine import TrainStep

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    step = TrainStep(opt, torch.nn.CrossEntropyLoss())
    with pytest.raises(CnnbenchError, match=r"loss became nan at epoch 2, step 7 \(lr 0.5\)"):
        step.check_finite(math.nan, "at epoch 2, step 7")


def test_training_epochs_drop_a_trailing_batch_of_one():
    """BatchNorm cannot train on one sample: a shuffled epoch of 9 in batches of 4 yields 8."""
    data = ImageTensors(torch.zeros(9, 1, 2, 2, dtype=torch.uint8), torch.arange(9))
    tf = BatchTransform(train=True, mean=[0.0], std=[1.0])
    train = TensorLoader(data, 4, tf, torch.device("cpu"), shuffle=True)
    sizes = [y.shape[0] for _, y in train]
    assert sizes == [4, 4] and len(train) == 2
    evaluation = TensorLoader(data, 4, tf, torch.device("cpu"), shuffle=False)
    assert [y.shape[0] for _, y in evaluation] == [4, 4, 1] and len(evaluation) == 3

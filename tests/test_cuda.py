"""The CUDA path (skipped without a GPU): training steps never wait for the host, batches
gathered on the host are pinned, fp16 (with GradScaler) and bf16 train through the real engine.

The CPU-side plumbing of the same choices (cudnn.benchmark, the GPU size rule, scaler and
autocast per precision) is tested in test_mapped.py, where it runs everywhere.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_data import load, write_images

from cnnbench.config import Precision, compose_checked
from cnnbench.data import ImageTensors, MappedImages, TensorLoader, build_transforms
from cnnbench.data import loader as loader_module
from cnnbench.engine import Meter, Progress, train_one_epoch
from cnnbench.train import build_model, build_training, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class NoSyncAfter:
    """The loader's batches; from batch `warmup` on, any host sync raises (sync debug mode)."""

    def __init__(self, loader: TensorLoader, warmup: int = 2) -> None:
        self.loader, self.warmup = loader, warmup

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for k, batch in enumerate(self.loader):
                if k == self.warmup:
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                yield batch
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pets"
    write_images(root / "cat", 40, (200, 60, 60), size=(40, 40), seed=1)
    write_images(root / "dog", 40, (60, 60, 200), size=(40, 40), seed=2)
    return root


def split_of(source: str, folder, tmp_path, monkeypatch):
    cache = {"memory": "memory", "host": "memory", "mapped": "disk", "stream": "off"}[source]
    extra = ["dataset.max_memory_mb=0"] if source == "stream" else []
    data = load(folder, tmp_path, "dataset.image_size=32", f"dataset.cache={cache}", *extra)
    if source == "host":  # an in-memory set too large for the GPU: gathered on the host
        monkeypatch.setattr(loader_module, "fits_on_device", lambda nbytes, device: False)
    return data.train


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("source", ["memory", "host", "mapped", "stream"])
def test_training_steps_never_wait_for_the_host(tmp_path, folder, monkeypatch, source, precision):
    device = torch.device("cuda", torch.cuda.current_device())
    split = split_of(source, folder, tmp_path, monkeypatch)
    cfg = compose_checked(
        ["model=lenet5", "optimizer=adam", "transforms=cifar", "device=cuda", "batch_size=8"]
        + ["device.channels_last=true", f"device.precision={precision}"]
    )
    train_tf, _ = build_transforms(cfg.transforms, ([0.5] * 3, [0.25] * 3), 3)
    loader = TensorLoader(split, 8, train_tf, device, shuffle=True, channels_last=True)
    loader.set_epoch(1)
    model = build_model(cfg, (3, 32, 32), 2, device)
    chosen = Precision(precision)
    state = build_training(cfg, model, chosen, device, len(loader))
    step = train_step(cfg, state, chosen, device)
    assert (state.scaler is not None) == (precision == "fp16")
    before = [p.detach().clone() for p in model.parameters()]
    progress = Progress(len(loader), "", enabled=False, log_interval=10**6)
    result = train_one_epoch(model, NoSyncAfter(loader), step, Meter(device), progress)
    assert math.isfinite(result.loss) and result.images == loader.images_before(len(loader))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if precision == "fp16":
        assert state.scaler.get_scale() > 0


@pytest.mark.parametrize("source", ["host", "mapped"])
def test_batches_gathered_on_the_host_are_pinned(tmp_path, folder, monkeypatch, source):
    split = split_of(source, folder, tmp_path, monkeypatch)
    assert isinstance(split, MappedImages if source == "mapped" else ImageTensors)
    device = torch.device("cuda", torch.cuda.current_device())
    stream = loader_module._host_source(split, 8, device)
    x, y = next(stream.batches(torch.arange(len(split))))
    assert x.is_pinned() and y.is_pinned() and x.dtype == torch.uint8


def test_small_in_memory_sets_live_on_the_gpu(tmp_path, folder, monkeypatch):
    split = split_of("memory", folder, tmp_path, monkeypatch)
    tf, _ = build_transforms(compose_checked([]).transforms, ([0.5] * 3, [0.25] * 3), 3)
    loader = TensorLoader(split, 8, tf, torch.device("cuda"), shuffle=True)
    assert loader.stream is None and loader.images.is_cuda and loader.labels.is_cuda

"""Speed features: precision=auto decisions, onecycle, the fast recipe, compile/channels_last
checkpoints and scripts/bench.py. No timed assertions here: timings belong to scripts/."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, TINY, read_json
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from cnnbench import device as dev
from cnnbench.checkpoint import load_checkpoint, save_checkpoint, unwrap
from cnnbench.config import Precision, TransformsConfig, compose_checked
from cnnbench.data import ImageTensors, TensorLoader, build_transforms
from cnnbench.device import PrecisionProbe, Workload, resolve_precision
from cnnbench.engine import TrainStep, evaluate, train_one_epoch
from cnnbench.errors import CnnbenchError
from cnnbench.models import count_params, create_model
from cnnbench.optim import build_scheduler, is_per_step

CPU = torch.device("cpu")
# CIFAR-10-sized run: 45,000 images x 20 epochs, batch 128 (big enough to measure).
BIG = Workload("fastnet", (3, 32, 32), 128, 45_000 * 20)
SMALL = Workload("lenet5", (1, 32, 32), 32, 1_375 * 20)  # the default digits run


def dcfg(precision: str = "auto", channels_last: bool = False) -> SimpleNamespace:
    return SimpleNamespace(precision=Precision(precision), channels_last=channels_last)


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """Pretend CPU flags and a scripted bf16 measurement; the cache goes to tmp_path."""
    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))
    state = SimpleNamespace(native=True, probe=PrecisionProbe(fp32=0.2, bf16=0.1), calls=0)

    def measure(model, workload, *, channels_last=False, steps=0):
        state.calls += 1
        return state.probe

    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: state.native)
    monkeypatch.setattr(dev, "measure_precisions", measure)
    return state


def test_auto_never_uses_emulated_bf16(cpu, caplog):
    cpu.native = False
    model = create_model("fastnet")
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        assert resolve_precision(dcfg(), CPU, model, BIG) == Precision.fp32
    assert cpu.calls == 0  # not even measured
    assert "no native bf16" in caplog.text
    with pytest.raises(CnnbenchError, match="emulated"):
        resolve_precision(dcfg("bf16"), CPU, model, BIG)


def test_auto_picks_bf16_when_measured_faster_and_caches_it(cpu, caplog, tmp_path):
    model = create_model("fastnet")
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        assert resolve_precision(dcfg(), CPU, model, BIG) == Precision.bf16
        assert cpu.calls == 1
        assert "measured on batch 128: fp32 200.0 ms/step, bf16 100.0 ms/step, bf16 2.00x" in (
            caplog.text
        )
        # Same model, input, batch, CPU: the cached figures decide, no second measurement.
        assert resolve_precision(dcfg(), CPU, model, BIG) == Precision.bf16
    assert cpu.calls == 1
    assert "cached measurement" in caplog.text
    cache = json.loads((tmp_path / "cache" / "precision.json").read_text())
    (key,) = cache
    assert key.startswith("fastnet|") and "|b128|nchw|" in key
    assert cache[key]["fp32"] == 0.2 and cache[key]["bf16"] == 0.1
    # Another batch size or memory format is another measurement.
    assert resolve_precision(dcfg(channels_last=True), CPU, model, BIG) == Precision.bf16
    assert cpu.calls == 2


def test_auto_keeps_fp32_when_bf16_is_not_clearly_faster(cpu):
    cpu.probe = PrecisionProbe(fp32=0.100, bf16=0.095)  # 1.05x: within noise
    assert resolve_precision(dcfg(), CPU, create_model("fastnet"), BIG) == Precision.fp32
    cpu.probe = PrecisionProbe(fp32=0.1, bf16=0.4)  # the slow path some CPUs take
    other_batch = dataclasses.replace(BIG, batch_size=64)
    assert resolve_precision(dcfg(), CPU, create_model("fastnet"), other_batch) == Precision.fp32
    assert cpu.calls == 2


def test_auto_skips_the_measurement_for_small_runs(cpu, caplog):
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        assert resolve_precision(dcfg(), CPU, create_model("lenet5"), SMALL) == Precision.fp32
        short = Workload("fastnet", (3, 32, 32), 512, 50_000)  # one epoch: 98 steps
        assert resolve_precision(dcfg(), CPU, create_model("fastnet"), short) == Precision.fp32
    assert cpu.calls == 0
    assert "run too small to repay a bf16 measurement" in caplog.text


def test_explicit_precisions_are_kept_or_refused(cpu):
    assert resolve_precision(dcfg("fp32"), CPU) == Precision.fp32
    assert resolve_precision(dcfg("bf16"), CPU) == Precision.bf16  # native (pretended)
    with pytest.raises(CnnbenchError, match="fp16 needs a CUDA GPU"):
        resolve_precision(dcfg("fp16"), CPU)
    assert cpu.calls == 0


def test_auto_on_cuda_is_bf16_only_where_native(monkeypatch, cpu):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Pretend GPU")
    cuda = torch.device("cuda")
    monkeypatch.setattr(dev, "cuda_has_native_bf16", lambda: True)
    assert resolve_precision(dcfg(), cuda) == Precision.bf16
    monkeypatch.setattr(dev, "cuda_has_native_bf16", lambda: False)  # e.g. a T4: emulated
    assert resolve_precision(dcfg(), cuda) == Precision.fp32
    with pytest.raises(CnnbenchError, match="emulated"):
        resolve_precision(dcfg("bf16"), cuda)
    assert cpu.calls == 0


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch):
    flags = "processor : 0\nmodel name : Some CPU\nflags : fpu sse avx2 avx512f {}\n"
    monkeypatch.setattr(dev, "_cpuinfo", lambda: flags.format("avx512_bf16"))
    assert dev.cpu_has_native_bf16() and dev.cpu_model_name() == "Some CPU"
    monkeypatch.setattr(dev, "_cpuinfo", lambda: flags.format("amx_bf16 amx_tile"))
    assert dev.cpu_has_native_bf16()
    monkeypatch.setattr(dev, "_cpuinfo", lambda: flags.format("avx512bw avx512vl"))
    assert not dev.cpu_has_native_bf16()  # AVX512 without BF16: torch would emulate
    monkeypatch.setattr(dev, "_cpuinfo", lambda: "")
    assert not dev.cpu_has_native_bf16()


def test_the_real_measurement_returns_step_times_and_leaves_the_model_alone():
    model = create_model("lenet5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = dev.measure_precisions(model, Workload("lenet5", (1, 32, 32), 8, 800), steps=5)
    assert probe.fp32 > 0 and probe.bf16 > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_onecycle_is_stepped_per_batch_with_the_documented_shape():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.4, momentum=0.9)
    scfg = SimpleNamespace(
        name="onecycle", pct_start=0.25, div_factor=8.0, final_div_factor=100.0, anneal="linear",
        warmup_epochs=0.0,
    )  # fmt: skip
    sched = build_scheduler(scfg, opt, epochs=4, steps_per_epoch=10)
    assert is_per_step(sched)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.05)
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 9  # 25% of 40 steps
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert opt.param_groups[0]["momentum"] == 0.9  # momentum is not cycled
    cosine = SimpleNamespace(name="cosine", min_lr=0.0, warmup_epochs=0.0)
    assert not is_per_step(build_scheduler(cosine, opt, epochs=4, steps_per_epoch=10))
    with pytest.raises(CnnbenchError, match="bad value for 'scheduler.anneal'.*exp"):
        compose_checked(["scheduler=onecycle", "scheduler.anneal=exp"])


def test_onecycle_lr_in_metrics_csv_rises_then_falls(cli, tmp_path):
    cli(
        "train",
        *TINY,
        "epochs=5",
        "optimizer=sgd",
        "optimizer.lr=0.1",
        "scheduler=onecycle",
        "hydra.run.dir=run",
    )
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    lrs = [float(r["lr"]) for r in rows]  # lr at the start of each epoch
    assert lrs[0] == pytest.approx(0.1 / 25)
    peak = lrs.index(max(lrs))
    assert 0 < peak < 4 and max(lrs) > 0.08
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    steps_per_epoch = last["scheduler"]["total_steps"] // 5
    assert last["scheduler"]["last_epoch"] == 5 * steps_per_epoch  # stepped every batch


def test_fast_recipe_composes_and_trains(cli, tmp_path):
    proc = cli(
        "train",
        "recipe=fast",
        "dataset=fake",
        "dataset.size=64",
        "epochs=1",
        "batch_size=16",
        "eval_batch_size=32",
        "device=cpu",
        "progress=false",
        "hydra.run.dir=run",
    )
    run = tmp_path / "run"
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert cfg["model"]["name"] == "fastnet"
    assert cfg["scheduler"]["name"] == "onecycle" and cfg["scheduler"]["anneal"] == "linear"
    assert cfg["optimizer"]["name"] == "sgd" and cfg["optimizer"]["nesterov"] is True
    assert cfg["label_smoothing"] == 0.2 and cfg["transforms"]["crop_padding"] == 2
    assert cfg["device"]["channels_last"] is True and cfg["device"]["precision"] == "auto"
    assert cfg["dataset"]["name"] == "fake" and cfg["epochs"] == 1  # the command line wins
    results = read_json(run / "results.json")
    assert results["model"] == "fastnet" and results["params"] == 295_480
    assert results["precision"] == "fp32"  # a 1-epoch toy run is too small to measure bf16
    assert "precision auto: fp32" in proc.stdout
    assert count_params(create_model("fastnet", 10, 3)) == 295_480
    assert create_model("fastnet", 10, 3)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def _fake_images(n: int, classes: int = 3) -> ImageTensors:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return ImageTensors(images, torch.arange(n) % classes)


def test_compiled_channels_last_model_trains_and_saves_plain_keys(tmp_path):
    """torch.compile's wrapper through train_one_epoch/evaluate, and unwrap() for checkpoints.

    backend="eager" runs dynamo's graph capture and the OptimizedModule wrapper without the
    minutes of C++ codegen inductor needs on this CPU (that one: test below, opt-in).
    """
    torch.manual_seed(0)
    model = create_model("lenet5", 3, 3).to(memory_format=torch.channels_last)
    net = torch.compile(model, backend="eager")
    tf, eval_tf = build_transforms(
        OmegaConf.structured(
            TransformsConfig(name="t", crop_padding=2, hflip=True, mean=[0.5], std=[0.25])
        ),
        ([0.5] * 3, [0.25] * 3),
        3,
    )
    data = _fake_images(48)
    loader = TensorLoader(data, 16, tf, CPU, shuffle=True, channels_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    tr = train_one_epoch(net, loader, TrainStep(opt, nn.CrossEntropyLoss()))
    ev = evaluate(net, TensorLoader(data, 32, eval_tf, CPU, shuffle=False, channels_last=True))
    assert tr.images == 48 and ev.images == 48 and np.isfinite(tr.loss)
    assert all(k.startswith("_orig_mod.") for k in net.state_dict())  # what unwrap() avoids
    save_checkpoint({"model": unwrap(net).state_dict()}, tmp_path / "best.pt")
    state = load_checkpoint(tmp_path / "best.pt")["model"]
    assert not any(k.startswith("_orig_mod.") for k in state)
    fresh = create_model("lenet5", 3, 3)
    fresh.load_state_dict(state)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))


@pytest.mark.skipif(
    os.environ.get("CNNBENCH_SLOW_TESTS") != "1",
    reason="inductor compiles train, eval and the last partial batch in C++: 1-3 min on this "
    "2-core CPU with a cold inductor cache (~17 s warm); set CNNBENCH_SLOW_TESTS=1 to run",
)
def test_cli_compile_and_channels_last_write_loadable_checkpoints(cli, tmp_path):
    cli("train", *TINY, "epochs=1", "device.compile=true", "device.channels_last=true",
        "hydra.run.dir=run")  # fmt: skip
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(tmp_path / "run" / name)["model"]
        assert not any(k.startswith("_orig_mod.") for k in state)
        create_model("lenet5", 10, 3).load_state_dict(state)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "train"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "fox"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:03d}.jpg")
    return root.parent


def test_bench_script_prints_both_throughputs_and_their_ratio(image_folder, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--model",
            "lenet5",
            "--data",
            str(image_folder),
            "--images",
            "32",
            "--batch-size",
            "16",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--peak-batch",
            "2",
            "--channels-last",
            "--json",
            str(out),
        ],  # fmt: skip
        env={**os.environ, "CNNBENCH_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    seed = next(line for line in lines if line.startswith("seed-style loop: "))
    ours = next(line for line in lines if line.startswith("cnnbench engine: "))
    ratio = next(line for line in lines if line.startswith("speedup: "))
    assert " img/s " in seed and " img/s " in ours and "GFLOP/s" in ours
    record = json.loads(out.read_text())
    assert record["images"] == 32 and record["channels_last"] is True
    seed_rate, our_rate = record["seed_style_img_s"][0], record["cnnbench_img_s"][0]
    assert seed_rate > 0 and our_rate > 0
    assert record["speedup"] == pytest.approx(our_rate / seed_rate)
    assert ratio.startswith(f"speedup: {our_rate / seed_rate:.2f}x")
    assert record["peak_gflops_fp32"] > 0
    assert record["train_flops_per_image"] > 1e6  # LeNet-5 on 3x32x32: ~3 MFLOP fwd+bwd
    assert "decoded 36 images" in proc.stderr  # decoded once, cached under CNNBENCH_CACHE


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_use_torchs_fused_update_on_cpu(name):
    from cnnbench.config import OPTIMIZERS
    from cnnbench.optim import build_optimizer

    model = create_model("lenet5")
    opt = build_optimizer(OPTIMIZERS[name], model.parameters())
    assert opt.defaults["fused"] is True
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    before = model.features[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.features[0].weight)

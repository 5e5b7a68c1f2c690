"""The recipe tools: warmup, plateau, clipping, accumulation, EMA, monitor, early stopping,
class weights, the balanced sampler, no decay on norms and biases, test-time augmentation.

Each test fails without its tool: units check the numbers (closed forms, exact equalities),
CLI runs check what a user sees (messages, results.json, resume).
"""

from __future__ import annotations

import copy
import csv
import math
import signal
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SIGNAL_AT_STEP, TINY, read_json
from omegaconf import OmegaConf
from test_reliability import RUN, harness, metrics, resume_command
from torch import nn

from cnnbench.averaging import FlipTTA, WeightEMA
from cnnbench.checkpoint import load_checkpoint
from cnnbench.config import SCHEDULERS, SGDConfig, check_values, compose_checked
from cnnbench.data import ImageTensors, TensorLoader
from cnnbench.engine import TrainStep, train_one_epoch
from cnnbench.errors import CnnbenchError
from cnnbench.models import create_model
from cnnbench.optim import (
    build_optimizer,
    build_scheduler,
    is_per_step,
    parameter_groups,
    retarget_scheduler,
    step_after_epoch,
)
from cnnbench.train import early_stop_reason


def scheduler_cfg(name: str, **values):
    return OmegaConf.merge(OmegaConf.structured(SCHEDULERS[name]), values)


def lrs_over(sched, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def sgd(lr: float = 1.0, params=None) -> torch.optim.SGD:
    return torch.optim.SGD(params or nn.Linear(2, 2).parameters(), lr=lr)


# ---- warmup and plateau


def test_warmup_is_linear_per_step_then_the_cosine_runs_per_step_to_min_lr():
    opt = sgd()
    scfg = scheduler_cfg("cosine", warmup_epochs=0.5, warmup_start_factor=0.2, min_lr=0.1)
    sched = build_scheduler(scfg, opt, epochs=3, steps_per_epoch=8)  # warmup 4 steps, 20 after
    assert is_per_step(sched)
    lrs = lrs_over(sched, opt, 24)
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    after = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 20)) / 2 for t in range(20)]
    assert lrs[4:] == pytest.approx(after)
    # without warmup_epochs: today's per-epoch cosine
    plain = build_scheduler(scheduler_cfg("cosine"), sgd(), epochs=3, steps_per_epoch=8)
    assert not is_per_step(plain) and isinstance(plain, torch.optim.lr_scheduler.CosineAnnealingLR)


@pytest.mark.parametrize(
    "name,values,expected",
    [
        ("none", {}, [0.5, 0.75, 1.0, 1.0, 1.0, 1.0]),
        ("step", {"step_size": 1, "gamma": 0.5}, [0.5, 0.75, 1.0, 1.0, 0.5, 0.5]),
        # onecycle warms up to where it starts (lr / div_factor), then runs its own cycle
        ("onecycle", {"div_factor": 4.0, "pct_start": 0.5}, [0.125, 0.1875, 0.25, 1.0, 0.5000125]),
    ],
)
def test_every_scheduler_takes_a_warmup(name, values, expected):
    opt = sgd()
    scfg = scheduler_cfg(name, warmup_epochs=1.0, warmup_start_factor=0.5, **values)
    sched = build_scheduler(scfg, opt, epochs=3, steps_per_epoch=2)
    assert is_per_step(sched)
    assert lrs_over(sched, opt, len(expected))[: len(expected)] == pytest.approx(expected)


def test_a_warmup_resumes_exactly_and_is_re_aimed_by_resume_epochs():
    def build(opt):
        return build_scheduler(scheduler_cfg("cosine", warmup_epochs=1), opt, 4, 5)

    opt = sgd()
    sched = build(opt)
    lrs_over(sched, opt, 3)  # stopped inside the warmup
    saved = copy.deepcopy((opt.state_dict(), sched.state_dict()))
    whole = lrs_over(sched, opt, 17)
    opt2 = sgd()
    sched2 = build(opt2)
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    assert lrs_over(sched2, opt2, 17) == pytest.approx(whole)
    with pytest.raises(CnnbenchError, match="the cosine schedule of RUN_DIR ended at step 15"):
        retarget_scheduler(sched2, 8, 5)  # an ended schedule is not stretched: lr stays min_lr
    opt3 = sgd()
    sched3 = build(opt3)
    sched3.load_state_dict(saved[1])
    assert retarget_scheduler(sched3, 8, 5) == "cosine schedule stretched from 15 to 35 steps"
    assert retarget_scheduler(sched3, 8, 5) is None
    assert lrs_over(sched3, opt3, 38)[-2:] == pytest.approx([(1 - math.cos(math.pi / 35)) / 2, 0])


def test_plateau_divides_the_lr_after_patience_epochs_without_a_better_val_loss():
    opt = sgd()
    sched = build_scheduler(scheduler_cfg("plateau", factor=0.5, patience=1), opt, 10, 4)
    assert not is_per_step(sched)
    lrs = []
    for val_loss in [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85]:
        step_after_epoch(sched, val_loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25])
    # with a warmup: per step first, then the plateau per epoch
    opt = sgd()
    sched = build_scheduler(scheduler_cfg("plateau", warmup_epochs=1, patience=0), opt, 10, 2)
    assert is_per_step(sched)
    assert lrs_over(sched, opt, 4) == pytest.approx([0.1, 0.55, 1.0, 1.0])
    step_after_epoch(sched, 1.0)
    step_after_epoch(sched, 2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_warmup_and_plateau_runs_write_their_lr_and_resume(cli, tmp_path):
    cli("train", *TINY, "epochs=3", "scheduler.warmup_epochs=1", "hydra.run.dir=warm")
    lrs = [float(r["lr"]) for r in csv.DictReader((tmp_path / "warm/metrics.csv").open())]
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(1e-3)  # adam's lr 1e-3
    # 74 images, batches of 16: 5 steps an epoch, warmup 5 steps, then 10 of cosine
    assert lrs[2] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 5 / 10)) / 2)
    cli("train", *TINY, "scheduler=plateau", "scheduler.patience=0", "hydra.run.dir=pl")
    last = load_checkpoint(tmp_path / "pl/last.pt")
    assert last["scheduler"]["plateau"]["last_epoch"] == 2
    proc = cli("train", f"resume={tmp_path / 'pl'}", "epochs=3")
    assert "resuming" in proc.stdout and len(metrics(tmp_path / "pl")) == 4
    with pytest.raises(CnnbenchError, match="warmup_epochs .* must be less than epochs"):
        check_values(compose_checked(["epochs=2", "scheduler.warmup_epochs=2"]))


# ---- clipping, accumulation, EMA (TrainStep)


def lenet_batches(n: int, batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def grad_norm(model: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()


@pytest.mark.parametrize("scaler", [False, True], ids=["fp32", "fp16-scaler"])
def test_clipping_bounds_the_gradient_norm_after_unscaling(scaler):
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 3)
    (x, y), *_ = lenet_batches(16, 16)
    free = copy.deepcopy(model)
    TrainStep(sgd(0.1, free.parameters()), nn.CrossEntropyLoss())(free, x * 50, y)
    assert grad_norm(free) > 1.0  # the unclipped gradient
    amp = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaler else None
    step = TrainStep(sgd(0.1, model.parameters()), nn.CrossEntropyLoss(), scaler=amp)
    step.clip_grad_norm = 0.5
    start = [p.detach().clone() for p in model.parameters()]
    step(model, x * 50, y)
    assert grad_norm(model) == pytest.approx(0.5, rel=1e-4)  # unscaled, then clipped
    moved = torch.linalg.vector_norm(
        torch.stack([(p - s).norm() for p, s in zip(model.parameters(), start, strict=True)])
    )
    assert moved.item() == pytest.approx(0.1 * 0.5, rel=1e-3)  # lr x the clipped norm


def train_epoch(batches, accumulate: int, sizes: list[int] | None = None) -> nn.Module:
    """LeNet-5 (no BatchNorm) after one epoch of `batches` with SGD + momentum."""
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train_one_epoch(model, batches, TrainStep(opt, nn.CrossEntropyLoss(), accumulate=accumulate))
    return model


def test_accumulating_k_batches_of_b_steps_as_one_batch_of_k_times_b():
    small = lenet_batches(64, 8)  # 8 batches of 8: accumulate 4 -> 2 steps of 32
    big = lenet_batches(64, 32)
    one, other = train_epoch(small, 4), train_epoch(big, 1)
    for a, b in zip(one.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(next(train_epoch(small, 1).parameters()), next(one.parameters()))
    # An epoch of 58 images in batches of 8: two groups of 4 batches (32 and 26 images: the
    # last batch has 2) step as batches of 32 and 26.
    small, big = lenet_batches(58, 8), lenet_batches(58, 32)
    one, other = train_epoch(small, 4), train_epoch(big, 1)
    for a, b in zip(one.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("warmup", [False, True], ids=["decay", "warmup"])
def test_the_ema_is_the_closed_form_of_the_weights_it_saw(warmup):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(10))
    model(torch.randn(2, 3, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = WeightEMA(model, decay=0.8, every=2, warmup=warmup)
    d2, d3 = (2 / 11, 3 / 12) if warmup else (0.8, 0.8)  # min(0.8, n / (n + 9))
    step = TrainStep(opt, nn.CrossEntropyLoss(), ema=ema)
    seen = []
    for i, (x, y) in enumerate(lenet_batches(7 * 4, 4)):
        step(model, x[:, :, :8, :8], y)
        if (i + 1) % 2 == 0:
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
    assert ema.steps == 7 and ema.updates == len(seen) == 3
    for key, value in ema.module.state_dict().items():
        w = [s[key].double() for s in seen]
        if value.is_floating_point():  # e_1 = w_1, e_n = d_n e_(n-1) + (1 - d_n) w_n
            closed = d3 * (d2 * w[0] + (1 - d2) * w[1]) + (1 - d3) * w[2]
            torch.testing.assert_close(value.double(), closed, rtol=1e-5, atol=1e-6)
        else:  # num_batches_tracked: copied
            assert torch.equal(value, seen[-1][key])
    state = ema.state_dict()
    again = WeightEMA(model, decay=0.8, every=2, warmup=warmup)
    again.load_state_dict(state)
    assert (again.steps, again.updates) == (7, 3)


# ---- monitor, early stopping


def rows(values: list[float], key: str = "val_loss") -> list[dict]:
    return [{"epoch": i + 1, key: v} for i, v in enumerate(values)]


def test_early_stop_counts_epochs_without_an_improvement_bigger_than_min_delta():
    history = rows([1.0, 0.9, 0.89, 0.95, 0.84])
    assert early_stop_reason(history[:4], "val_loss", None, 0.0) == ""
    assert early_stop_reason(history[:4], "val_loss", 3, 0.0) == ""
    assert early_stop_reason(history[:4], "val_loss", 2, 0.05).startswith(
        "early stopping after epoch 4: val_loss has not improved by more than 0.05 for 2 epochs"
    )
    assert early_stop_reason(history, "val_loss", 2, 0.05) == ""  # 0.84 < 0.9 - 0.05
    acc = rows([0.5, 0.6, 0.6, 0.59], "val_acc")
    assert "best 0.60000 at epoch 2" in early_stop_reason(acc, "val_acc", 2, 0.0)


def test_early_stopping_stops_says_why_and_survives_resume(cli, tmp_path):
    # min_delta 10: only the first epoch improves (from inf), so patience 2 stops after epoch 3
    args = [*TINY, "epochs=8", "early_stop.patience=2", "early_stop.min_delta=10"]
    proc = cli("train", *args, "hydra.run.dir=es")
    assert "early stopping after epoch 3: val_loss has not improved by more than 10" in proc.stdout
    results = read_json(tmp_path / "es/results.json")
    assert results["stopped_early"] is True and results["stopped_epoch"] == 3
    assert len(metrics(tmp_path / "es")) == 1 + 3
    again = cli(
        "train", f"resume={tmp_path / 'es'}"
    )  # already stopped: no more epochs, tested again
    assert "no more epochs to train" in again.stdout and len(metrics(tmp_path / "es")) == 4
    # the count goes on across a resume: 2 epochs, then resumed for up to 10 -> stops after 4
    # (scheduler=step: a finished cosine run is not extended, its lr is min_lr)
    es = ["early_stop.patience=3", "early_stop.min_delta=10", "scheduler=step"]
    cli("train", *TINY, *es, "hydra.run.dir=r")
    cli("train", f"resume={tmp_path / 'r'}", "epochs=10")
    assert read_json(tmp_path / "r/results.json")["stopped_epoch"] == 4


def test_monitor_val_acc_keeps_the_most_accurate_epoch(cli, tmp_path):
    proc = cli("train", *TINY, "epochs=4", "monitor=val_acc", "hydra.run.dir=acc")
    history = list(csv.DictReader((tmp_path / "acc/metrics.csv").open()))
    best = max(history, key=lambda r: (float(r["val_acc"]), -int(r["epoch"])))
    results = read_json(tmp_path / "acc/results.json")
    assert results["monitor"] == "val_acc" and results["best_epoch"] == int(best["epoch"])
    assert load_checkpoint(tmp_path / "acc/best.pt")["epoch"] == int(best["epoch"])
    assert "[INFO] val_acc has been improved from -inf to" in proc.stdout


# ---- class weights, balanced sampler, weight decay groups


def test_balanced_class_weights_are_scikit_learns_and_only_weight_the_training_loss(cli):
    from sklearn.utils.class_weight import compute_class_weight

    from cnnbench.train import class_weights

    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    splits = SimpleNamespace(train=SimpleNamespace(labels=labels), classes=["a", "b", "c"])
    data = SimpleNamespace(splits=splits, num_classes=3)
    cfg = OmegaConf.create({"loss": {"class_weights": "balanced"}})
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
    assert class_weights(cfg, data).tolist() == pytest.approx(expected.tolist())
    cfg.loss.class_weights = [1, 2]
    with pytest.raises(CnnbenchError, match="has 2 weights, but the model has 3 classes"):
        class_weights(cfg, data)
    proc = cli("train", *TINY, "epochs=1", "loss.class_weights=[1,1,1]", check=False)
    assert "loss.class_weights has 3 weights, but the model has 10 classes" in proc.stderr
    cli("train", *TINY, "epochs=1", "loss.class_weights=balanced")


def labelled(counts: list[int]) -> ImageTensors:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return ImageTensors(torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8), labels)


def epoch_labels(loader: TensorLoader, epoch: int) -> torch.Tensor:
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader])


class Unchanged:
    """A batch transform that leaves the batch as it is."""

    train = False
    mix = None  # no MixUp/CutMix

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return x


def test_the_balanced_sampler_draws_classes_evenly_and_reproducibly():
    data = labelled([900, 90, 10])
    tf = Unchanged()
    loader = TensorLoader(data, 100, tf, torch.device("cpu"), shuffle=True, balanced=True)
    drawn = torch.cat([epoch_labels(loader, e) for e in range(1, 6)])
    share = torch.bincount(drawn, minlength=3) / len(drawn)
    assert share.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)  # 5,000 draws
    assert torch.equal(epoch_labels(loader, 2), epoch_labels(loader, 2))
    assert not torch.equal(epoch_labels(loader, 2), epoch_labels(loader, 3))
    plain = TensorLoader(data, 100, tf, torch.device("cpu"), shuffle=True)
    assert torch.bincount(epoch_labels(plain, 1)).tolist() == [900, 90, 10]


def test_no_decay_on_norm_and_bias_parameters_when_asked():
    model = create_model("fastnet", 10, 3)
    default = SGDConfig(weight_decay=0.1)
    assert [id(p) for p in parameter_groups(model, default)] == [id(p) for p in model.parameters()]
    excluded = SGDConfig(weight_decay=0.1, momentum=0.0, decay_norm_and_bias=False)
    opt = build_optimizer(excluded, parameter_groups(model, excluded))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"weight", "bias"}
    assert all(p.ndim == 1 for p in no_decay["params"])
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay moves a parameter
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b) == (p.ndim == 1)


# ---- test-time augmentation


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror(cli, tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 3).eval()
    x = torch.randn(5, 3, 32, 32)
    expected = (model(x) + model(x.flip(3))) / 2
    torch.testing.assert_close(FlipTTA(model)(x), expected)
    cli("train", *TINY, "tta=flip", "hydra.run.dir=tta")
    results = read_json(tmp_path / "tta/results.json")
    flipped = cli("eval", "tta", "device=cpu")
    assert "tta=flip" in flipped.stdout
    m = read_json(tmp_path / "tta/eval/metrics.json")
    assert m["tta"] == "flip" and m["loss"] == pytest.approx(results["test_loss"], rel=1e-5)
    cli("eval", "tta", "tta=none", "device=cpu")
    plain = read_json(tmp_path / "tta/eval/metrics.json")
    assert plain["tta"] == "none" and plain["loss"] != pytest.approx(m["loss"], rel=1e-5)


# ---- all together: Ctrl-C mid-epoch, resume, the uninterrupted run's metrics


def test_resume_mid_epoch_with_ema_accumulation_warmup_and_clipping_is_exact(cli, tmp_path):
    # 74 images in batches of 8: 10 batches an epoch, accumulated by 3 -> steps after batches
    # 3, 6, 9 and 10. Ctrl-C at batch 4 stops after batch 6 (the next optimizer step).
    run = [
        *RUN,
        "accumulate_steps=3",
        "ema.decay=0.9",
        "scheduler.warmup_epochs=1.5",
        "optimizer.clip_grad_norm=1.0",
    ]
    full = cli("train", *run, "hydra.run.dir=full")
    assert "3 batches per optimizer step: 24 effective" in full.stdout
    assert read_json(tmp_path / "full/results.json")["effective_batch_size"] == 24
    code = SIGNAL_AT_STEP.format(at_epoch=2, at_step=4, signum=int(signal.SIGINT), rank=0)
    proc = harness(tmp_path, code, "train", *run, "hydra.run.dir=stopped")
    assert proc.returncode == 130, proc.stderr
    assert "stopped by SIGINT in epoch 2 after step 6" in proc.stdout
    last = load_checkpoint(tmp_path / "stopped/last.pt")
    assert last["partial"]["step"] == 6 and last["ema"]["steps"] == 4 + 2
    cli(*resume_command(proc.stdout)[1:])
    assert metrics(tmp_path / "stopped") == metrics(tmp_path / "full")
    for name in ("best.pt", "last.pt"):
        saved = load_checkpoint(tmp_path / "stopped" / name)
        whole = load_checkpoint(tmp_path / "full" / name)
        state = (saved["model"], whole["model"]) if name == "best.pt" else (
            saved["ema"]["module"], whole["ema"]["module"]
        )  # fmt: skip
        for key, value in state[0].items():
            assert torch.equal(value, state[1][key]), (name, key)


def test_every_tool_is_off_by_default():
    cfg = compose_checked([])
    assert cfg.scheduler.warmup_epochs == 0 and cfg.optimizer.clip_grad_norm is None
    assert cfg.accumulate_steps == 1 and cfg.ema.decay is None and cfg.early_stop.patience is None
    assert cfg.loss.class_weights == "none" and cfg.dataset.sampler.value == "random"
    assert cfg.optimizer.decay_norm_and_bias is True and cfg.tta.value == "none"
    assert cfg.monitor.value == "val_loss"


def test_bad_values_are_named():
    bad = ["ema.decay=1.5", "accumulate_steps=0", "optimizer.clip_grad_norm=-1"]
    bad += ["loss.class_weights=[1,-2]", "early_stop.patience=0", "scheduler=plateau"]
    with pytest.raises(CnnbenchError) as err:
        check_values(compose_checked([*bad, "scheduler.factor=2"]))
    texts = ["ema.decay must be in (0, 1)", "accumulate_steps must be >= 1"]
    texts += ["optimizer.clip_grad_norm must be", "loss.class_weights must be"]
    texts += ["early_stop.patience must be >= 1", "scheduler.factor must be in (0, 1)"]
    assert [t for t in texts if t not in str(err.value)] == []


def test_a_recipe_key_the_chosen_option_lacks_is_named():
    with pytest.raises(CnnbenchError) as err:
        compose_checked(["recipe=fast", "optimizer=adamw"])
    assert "Key 'nesterov' not in 'AdamWConfig'" in str(err.value)
    assert "In 'recipe/fast'" in str(err.value)

"""`cnnbench export`: every zoo model round-trips through ONNX (and TorchScript), and an
exported .onnx file predicts like its run dir."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, run_cnnbench
from PIL import Image

from cnnbench.export import (
    ATOL,
    OnnxClassifier,
    config_hash,
    export_metadata,
    export_model,
    load_torchscript,
)
from cnnbench.models import create_model, registered_models

# Every architecture of the zoo; the deeper VGGs (13/16/19, +_bn) are vgg11's code with longer
# layer lists (and 10-15 s each to export), so vgg11 and vgg11_bn stand for them.
DEEPER_VGG = {f"vgg{d}{bn}" for d in (13, 16, 19) for bn in ("", "_bn")}
ZOO = [info.name for info in registered_models() if info.name not in DEEPER_VGG]
CLASSES = [f"c{i}" for i in range(4)]


def smallest_input(name: str, model: torch.nn.Module) -> tuple[int, int, int]:
    """The model's smallest square input among 32, 64 and its native size (what the test
    exports at: the VGG, ResNet and torchvision AlexNet pool adaptively)."""
    info = next(i for i in registered_models() if i.name == name)
    channels = info.input_size[0]
    for size in (32, 64):
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, size, size))
            return channels, size, size
        except RuntimeError:
            continue
    return info.input_size


def metadata_for(name: str, input_size: tuple[int, int, int]) -> dict[str, str]:
    ckpt = dict(model_name=name, classes=CLASSES, num_classes=4, input_size=list(input_size))
    channels = input_size[0]
    return export_metadata(ckpt, [0.5] * channels, [0.25] * channels, "abc123")


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_exports_to_onnx(name, tmp_path):
    """Random weights, the smallest input the model takes: the export's own check (PyTorch
    vs onnxruntime on random batches of 3 and 1) passes and the metadata reads back."""
    pytest.importorskip("onnxruntime", reason="pip install 'cnnbench[export]'")
    pytest.importorskip("onnxscript", reason="pip install 'cnnbench[export]'")
    torch.manual_seed(0)
    model = create_model(name, len(CLASSES)).eval()
    input_size = smallest_input(name, model)
    out = tmp_path / f"{name}.onnx"
    metadata = metadata_for(name, input_size)
    result = export_model(model, input_size, metadata, out)
    print(f"{name} {'x'.join(map(str, input_size))} onnx max_abs_diff={result.max_abs_diff:.3g}")
    assert result.max_abs_diff < ATOL and out.is_file() and result.opset == 20
    assert result.metadata == metadata
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the temp file is gone


@pytest.mark.parametrize("name", ["lenet5", "fastnet"])
def test_onnx_classifier_reads_the_metadata_and_gives_pytorch_probabilities(name, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'cnnbench[export]'")
    model = create_model(name, len(CLASSES)).eval()
    input_size = smallest_input(name, model)
    out = tmp_path / "model.onnx"
    export_model(model, input_size, metadata_for(name, input_size), out)
    clf = OnnxClassifier(out)  # the file alone: 1-channel (LeNet-5) and RGB
    assert clf.classes == CLASSES and clf.input_size == input_size
    assert clf.mean == [0.5] * input_size[0] and clf.config_hash == "abc123"
    images = torch.randint(0, 256, (5, *input_size), dtype=torch.uint8)
    with torch.no_grad():
        expected = model((images.float() / 255 - 0.5) / 0.25).softmax(dim=1).numpy()
    probs = clf(images)
    assert probs.shape == (5, len(CLASSES)) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.abs(probs - expected).max() < 1e-5


@pytest.mark.parametrize("name", ["lenet5", "small_alexnet", "vgg11_bn", "resnet18", "fastnet"])
def test_one_model_per_family_exports_to_torchscript(name, tmp_path):
    model = create_model(name, len(CLASSES)).eval()
    input_size = smallest_input(name, model)
    out = tmp_path / f"{name}.torchscript.pt"
    metadata = metadata_for(name, input_size)
    result = export_model(model, input_size, metadata, out, "torchscript")
    print(f"{name} torchscript max_abs_diff={result.max_abs_diff:.3g}")
    assert result.max_abs_diff < ATOL and result.metadata == metadata
    module, meta = load_torchscript(out)
    assert json.loads(meta["classes"]) == CLASSES and meta["config_hash"] == "abc123"
    x = torch.randn(2, *input_size)
    with torch.no_grad():
        assert torch.equal(module(x), model(x))


def test_a_mismatch_fails_the_export_with_the_figure(tmp_path, monkeypatch):
    import cnnbench.export as export
    from cnnbench.errors import CnnbenchError

    model = create_model("lenet5", 4).eval()
    monkeypatch.setattr(
        export,
        "_torchscript_logits",
        lambda path, batches: ([np.ones((len(b), 4)) for b in batches], {}),
    )
    with pytest.raises(CnnbenchError, match=r"max abs logit difference \d.*limit 0.0001"):
        export_model(
            model,
            (1, 32, 32),
            metadata_for("lenet5", (1, 32, 32)),
            tmp_path / "m.pt",
            "torchscript",
        )
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def read_predictions(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny finished run (LeNet-5, fake 3x32x32 data) and a folder of images."""
    cwd = tmp_path_factory.mktemp("export")
    run_cnnbench("train", *TINY, "hydra.run.dir=run", cwd=cwd)
    rng = np.random.default_rng(0)
    (cwd / "images").mkdir()
    for i in range(7):  # various sizes: predict resizes
        pixels = rng.integers(0, 256, (28 + 3 * i, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(cwd / "images" / f"{i}.png")
    return cwd / "run"


def test_train_export_predict_end_to_end(run, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'cnnbench[export]'")
    images = run.parent / "images"
    proc = run_cnnbench("export", str(run), cwd=tmp_path)
    onnx_file = run / "export" / "model.onnx"
    assert f"to {onnx_file}" in proc.stdout
    diff = float(proc.stdout.split("onnxruntime ")[1].split()[0])
    assert 0 <= diff < ATOL

    meta = OnnxClassifier(onnx_file)
    best = torch.load(run / "best.pt", weights_only=True)
    assert meta.classes == best["classes"] and list(meta.input_size) == best["input_size"]
    assert meta.mean == pytest.approx(best["mean"]) and meta.std == pytest.approx(best["std"])
    assert meta.config_hash == config_hash(run) and len(meta.config_hash) == 64

    # The same predictions from the run dir (PyTorch) and the .onnx file (onnxruntime);
    # batches of 3 leave a last batch of 1 (the dynamic batch axis)
    run_cnnbench(
        "predict", str(run), str(images), "--out", "torch", "--batch-size", "3", cwd=tmp_path
    )
    run_cnnbench(
        "predict", str(onnx_file), str(images), "--out", "onnx", "--batch-size", "3", cwd=tmp_path
    )
    torch_rows = read_predictions(tmp_path / "torch" / "predictions.csv")
    onnx_rows = read_predictions(tmp_path / "onnx" / "predictions.csv")
    assert len(onnx_rows) == 7
    assert [(r["path"], r["label"]) for r in onnx_rows] == [
        (r["path"], r["label"]) for r in torch_rows
    ]
    for a, b in zip(onnx_rows, torch_rows, strict=True):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=2e-6)
    # Default --out for a file: predict/ next to it
    run_cnnbench("predict", str(onnx_file), str(images / "0.png"), cwd=tmp_path)
    assert (run / "export" / "predict" / "predictions.csv").is_file()


def test_config_hash_is_stable_and_ignores_resume(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run / ".hydra", copy / ".hydra")
    saved = copy / ".hydra" / "config.yaml"
    assert config_hash(copy) == config_hash(run)
    saved.write_text(saved.read_text().replace("resume: null", f"resume: {run}"))
    assert config_hash(copy) == config_hash(run)
    saved.write_text(saved.read_text().replace("seed: 0", "seed: 1"))
    assert config_hash(copy) != config_hash(run)


def test_export_errors_are_one_line(run, tmp_path):
    cases = [
        (["export", str(tmp_path / "missing")], "is not a run directory"),
        (["export", str(tmp_path)], "is not a cnnbench run directory (no .hydra/config.yaml)"),
        (["export", str(run), "--format", "torchscript", "--opset", "18"], "--opset applies"),
        (["export", str(run), "--out", str(tmp_path)], "is a directory"),
        (["predict", str(run / "best.pt"), str(tmp_path)], "is not an .onnx file"),
    ]
    for args, message in cases:
        proc = run_cnnbench(*args, cwd=tmp_path, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr


def test_missing_export_extra_names_it(run, tmp_path):
    """Without onnxruntime (hidden by a stub that fails to import) the error names the extra."""
    stub = tmp_path / "stub"
    for module in ("onnx", "onnxruntime", "onnxscript"):
        (stub / module).mkdir(parents=True)
        (stub / module / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": f"{stub}:{REPO}"}
    for args in (["export", str(run)], ["predict", str(run / "x.onnx"), str(tmp_path)]):
        if args[0] == "predict":
            (run / "x.onnx").write_bytes(b"")
        proc = run_cnnbench(*args, cwd=tmp_path, check=False, env=env)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "pip install 'cnnbench[export]'" in proc.stderr, proc.stderr
    (run / "x.onnx").unlink()

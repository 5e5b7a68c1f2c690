"""A run dir as a re-usable record: curves.png, `cnnbench eval`, `predict` and `rerun`."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    TINY,
    assert_upright,
    odd_name,
    read_json,
    run_cnnbench,
    save_sideways_jpeg,
    upright_pattern,
)
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def metric_rows(path) -> list[list[str]]:
    """metrics.csv without the wall-clock `seconds` column."""
    return [row[:-1] for row in csv.reader(path.read_text().splitlines())]


def png_size(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as img:
        return img.size


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny finished run (LeNet-5 on 3x32x32 fake data, 2 epochs)."""
    cwd = tmp_path_factory.mktemp("train")
    run_cnnbench("train", *TINY, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


def test_curves_png_is_written_with_the_metrics(run):
    width, height = png_size(run / "curves.png")
    assert width > 400 and height > 150
    assert len(metric_rows(run / "metrics.csv")) == 3  # header + 2 epochs


def test_best_pt_stores_the_normalization_of_the_train_split(run):
    from cnnbench.commands.eval import rebuild_data
    from cnnbench.runs import compose_saved

    best = torch.load(run / "best.pt", weights_only=True)
    eval_tf = rebuild_data(compose_saved(run)).eval_tf  # train-split statistics, recomputed
    assert best["mean"] == pytest.approx(eval_tf.mean) and best["std"] == pytest.approx(eval_tf.std)
    assert len(best["mean"]) == 3 and all(0.3 < m < 0.7 for m in best["mean"])  # uniform noise
    assert best["input_size"] == [3, 32, 32] and len(best["classes"]) == 10


def test_eval_reproduces_the_test_figures_of_results_json(run, tmp_path):
    proc = run_cnnbench("eval", str(run), cwd=tmp_path)  # from another working directory
    results = read_json(run / "results.json")
    metrics = read_json(run / "eval" / "metrics.json")
    assert metrics["split"] == "test" and metrics["checkpoint_epoch"] == results["best_epoch"]
    assert metrics["loss"] == pytest.approx(results["test_loss"], rel=1e-6)
    assert metrics["top1"] == results["test_top1"]
    assert metrics["top5"] == results["test_top5"]
    assert f"loss {results['test_loss']:.4f}  top-1 {results['test_top1']:.4f}" in proc.stdout

    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10)
    assert matrix.sum() == metrics["images"] == 14  # 15% of the 96 fake images
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["top1"])

    rows = read_csv(run / "eval" / "per_class.csv")
    assert [r["class_name"] for r in rows] == [f"class{i}" for i in range(10)]
    assert [int(r["support"]) for r in rows] == matrix.sum(axis=1).tolist()
    assert [int(r["correct"]) for r in rows] == np.diag(matrix).tolist()
    for r in rows:
        if int(r["support"]):
            assert float(r["accuracy"]) == pytest.approx(int(r["correct"]) / int(r["support"]))
            assert metrics["per_class_accuracy"][r["class_name"]] == pytest.approx(
                float(r["accuracy"])
            )
        else:
            assert r["accuracy"] == "" and metrics["per_class_accuracy"][r["class_name"]] is None
        assert f"\n{r['class_name']}  " in proc.stdout  # the per-class table
    width, height = png_size(run / "eval" / "confusion_matrix.png")
    assert width > 300 and height > 300


def test_eval_on_the_val_split_matches_the_best_epoch(run, tmp_path):
    from cnnbench.commands.eval import evaluate_run

    out = tmp_path / "val-eval"
    evaluate_run(run, "val", ["eval_batch_size=5", "device=cpu", "progress=false"], out)
    metrics = read_json(out / "metrics.json")
    best = torch.load(run / "best.pt", weights_only=True)
    assert metrics["split"] == "val" and metrics["images"] == 8
    assert metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert (out / "per_class.csv").is_file() and (out / "confusion_matrix.png").is_file()


def cli_error(capsys, *args: str) -> str:
    """Run the CLI in this process where it fails before any work; its one stderr line."""
    from cnnbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def test_eval_errors_are_one_line(run, tmp_path, capsys):
    err = cli_error(capsys, "eval", str(run), "split=train")
    assert err == "error: split=train: valid splits are test, val"
    empty = tmp_path / "empty"
    (empty / ".hydra").mkdir(parents=True)
    shutil.copy(run / ".hydra" / "config.yaml", empty / ".hydra" / "config.yaml")
    assert "has no finished epoch (no best.pt, no last.pt)" in cli_error(capsys, "eval", str(empty))
    assert "is not a cnnbench run directory" in cli_error(capsys, "eval", str(tmp_path / "no"))
    assert "unknown config key 'epochz'" in cli_error(capsys, "eval", str(run), "epochz=1")


def test_predict_files_and_folders(run, tmp_path):
    """Test-split images saved as PNG get the probabilities the eval pipeline gives them."""
    from cnnbench.commands.eval import rebuild_data
    from cnnbench.data.transforms import BatchTransform
    from cnnbench.runs import compose_saved
    from cnnbench.train import model_from_checkpoint

    data = rebuild_data(compose_saved(run)).splits
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(data.test.images[i].permute(1, 2, 0).numpy()).save(folder / f"t{i}.png")
    single = tmp_path / "single.png"
    Image.fromarray(data.test.images[3].permute(1, 2, 0).numpy()).save(single)
    # Other formats are converted: grayscale, RGBA and a non-native size.
    Image.fromarray(np.full((20, 50), 128, np.uint8)).save(folder / "gray.jpg")
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(folder / "rgba.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image, and not listed")

    proc = run_cnnbench(
        "predict", str(run), str(tmp_path / "images"), str(single), "missing.png", cwd=tmp_path
    )
    out = run / "predict"
    rows = read_csv(out / "predictions.csv")
    names = [r["path"].rsplit("/", 1)[-1] for r in rows]
    assert names == ["gray.jpg", "rgba.png", "t0.png", "t1.png", "t2.png", "single.png"]
    skipped = read_csv(out / "skipped.csv")
    assert {s["path"].rsplit("/", 1)[-1] for s in skipped} == {"broken.jpg", "missing.png"}
    assert "skipped 2 unreadable file(s)" in proc.stderr and "broken.jpg" in proc.stderr
    assert "wrote" in proc.stdout and "(6 images)" in proc.stdout

    best = torch.load(run / "best.pt", weights_only=True)
    model = model_from_checkpoint(best, torch.device("cpu"))
    transform = BatchTransform(train=False, mean=best["mean"], std=best["std"])
    with torch.no_grad():
        probs = model(transform(data.test.images[[0, 1, 2, 3]])).softmax(1)
    for row, p in zip(rows[2:], probs, strict=True):
        assert row["label"] == best["classes"][int(p.argmax())]
        assert float(row["probability"]) == pytest.approx(float(p.max()), abs=1e-5)
        top5 = [item.split(":") for item in row["top5"].split(";")]
        assert len(top5) == 5 and top5[0][0] == row["label"]
        values = [float(v) for _, v in top5]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(p.sort(descending=True).values[:5].tolist(), abs=1e-4)
    width, height = png_size(out / "predictions.png")
    assert width > 200 and height > 200


def test_predict_out_dir_and_nothing_readable(run, tmp_path, capsys):
    from cnnbench.cli import main

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(run), str(bad), "--out", str(tmp_path / "preds"), "--device", "cpu"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"skipped 1 unreadable file(s):\n  {bad}: not an image file" in err
    assert err.splitlines()[-1].startswith(f"error: no readable images among {bad}")
    assert "bad.png" in (tmp_path / "preds" / "skipped.csv").read_text()
    assert not (tmp_path / "preds" / "predictions.csv").exists()


def test_predict_decodes_exactly_as_the_folder_scan(run, tmp_path, monkeypatch):
    """An EXIF-rotated JPEG, a 16-bit gray PNG and an RGBA PNG: predict feeds the model the very
    pixels a folder run stores for training (dataset.image_size = the model's input size)."""
    import cnnbench.commands.predict as predict_module
    from cnnbench.config import compose_checked
    from cnnbench.data.folder import load_folder
    from cnnbench.data.transforms import BatchTransform

    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    save_sideways_jpeg(root / "a" / "sideways.jpg", upright_pattern(96, 160))
    ramp = np.tile(np.linspace(0, 65535, 50).round().astype(np.uint16), (40, 1))
    Image.fromarray(ramp).save(root / "a" / "wide16.png")
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, 20:] = (0, 0, 200, 255)  # left half fully transparent (and black underneath)
    Image.fromarray(rgba).save(root / "b" / "rgba.png")
    files = [root / "a" / "sideways.jpg", root / "a" / "wide16.png", root / "b" / "rgba.png"]

    cfg = compose_checked(
        ["dataset=folder", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}"]
        + ["dataset.image_size=32"]
    )
    splits, *_ = load_folder(cfg.dataset, cfg.transforms, 0, progress=False)
    scanned = dict(zip(splits["all"].files, splits["all"].images, strict=True))
    fed = []

    class Recording(BatchTransform):
        def __call__(self, x, gen=None):
            fed.append(x.cpu().clone())
            return super().__call__(x, gen)

    monkeypatch.setattr(predict_module, "BatchTransform", Recording)
    predict_module.predict(run, files, tmp_path / "out", device_name="cpu")
    (batch,) = fed
    for path, x in zip(files, batch, strict=True):
        assert torch.equal(x, scanned[str(path.relative_to(root))]), path
    assert_upright(batch[0])
    ramp_row = batch[1][0, 0].tolist()  # 0..65535 rescaled to 0..255 (a clip gives all 255)
    assert ramp_row == sorted(ramp_row) and ramp_row[0] <= 5 and ramp_row[-1] >= 250
    assert abs(ramp_row[16] - 128) <= 8 and bool((batch[1] == batch[1][0]).all())
    assert batch[2][:, :, :8].unique().tolist() == [255]  # transparent: white, not black
    assert batch[2][:, :, -8:].flatten(1).unique(dim=1).tolist() == [[0], [0], [200]]


def test_predict_keeps_the_good_results_next_to_names_that_are_not_utf8(run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    noise = np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8)
    Image.fromarray(noise).save(folder / "plain.png")
    odd_name(folder, b"\xff.png").write_bytes((folder / "plain.png").read_bytes())
    odd_name(folder, b"\xfe.png").write_bytes(b"not a png")
    # A terminal that takes nothing but UTF-8: printing a raw surrogate would crash it.
    env = {"PYTHONIOENCODING": "utf-8:strict"}
    proc = run_cnnbench("predict", str(run), str(folder), "--out", "out", cwd=tmp_path, env=env)
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert [r["path"] for r in rows] == [f"{folder}/plain.png", f"{folder}/\\xff.png"]
    assert rows[0]["top5"] == rows[1]["top5"]  # the same pixels under both names
    assert read_csv(tmp_path / "out" / "skipped.csv") == [
        {"path": f"{folder}/\\xfe.png", "reason": "not an image file"}
    ]
    assert f"{folder}/\\xff.png: " in proc.stdout and "(2 images)" in proc.stdout


def test_predict_lists_broken_links(run, tmp_path):
    from cnnbench.commands.predict import predict

    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "ok.png")
    os.symlink("gone.png", folder / "sub" / "dangling.png")
    os.symlink(tmp_path / "no-such-folder", folder / "photos")
    os.symlink("nowhere.jpg", tmp_path / "given.jpg")
    result = predict(run, [folder, tmp_path / "given.jpg"], tmp_path / "out", device_name="cpu")
    assert [Path(r["path"]).name for r in result["rows"]] == ["ok.png"]
    assert read_csv(tmp_path / "out" / "skipped.csv") == [
        {"path": f"{folder}/photos", "reason": f"broken link (to {tmp_path}/no-such-folder)"},
        {"path": f"{folder}/sub/dangling.png", "reason": "broken link (to gone.png)"},
        {"path": f"{tmp_path}/given.jpg", "reason": "broken link (to nowhere.jpg)"},
    ]


@pytest.fixture(scope="module")
def rerun(run, tmp_path_factory):
    """`cnnbench rerun` from another working directory, with a self-contained copy of the run.

    Only `.hydra/config.yaml` is copied: the saved config alone re-creates the run.
    With tensorboard installed it also turns on logger=tensorboard (metrics are unchanged).
    """
    cwd = tmp_path_factory.mktemp("rerun")
    copy = cwd / "copied-run" / ".hydra"
    copy.mkdir(parents=True)
    shutil.copy(run / ".hydra" / "config.yaml", copy / "config.yaml")
    extra = []
    try:
        import tensorboard  # noqa: F401

        extra.append("logger=tensorboard")
    except ImportError:
        pass
    proc = run_cnnbench("rerun", str(copy.parent), *extra, cwd=cwd)
    (new_run,) = list((cwd / "outputs").glob("*/*"))
    return proc, new_run


def test_rerun_reproduces_the_metrics_into_a_new_run_dir(run, rerun):
    proc, new_run = rerun
    assert new_run != run
    assert metric_rows(new_run / "metrics.csv") == metric_rows(run / "metrics.csv")
    old, new = read_json(run / "results.json"), read_json(new_run / "results.json")
    for key in ["test_loss", "test_top1", "test_top5", "best_epoch", "params"]:
        assert new[key] == old[key], key
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    again = yaml.safe_load((new_run / ".hydra" / "config.yaml").read_text())
    saved.pop("logger", None), again.pop("logger", None)
    assert again == saved


def test_rerun_takes_overrides(run, cli, tmp_path, capsys):
    cli("rerun", str(run), "epochs=1", "hydra.run.dir=one")
    rows = metric_rows(tmp_path / "one" / "metrics.csv")
    assert rows == metric_rows(run / "metrics.csv")[:2]  # epoch 1 of the same recipe
    assert "cnnbench train resume=RUN_DIR" in cli_error(capsys, "rerun", str(run), "resume=auto")
    err = cli_error(capsys, "rerun", str(run), "optimizer.lrr=1")
    assert "unknown config key 'optimizer.lrr'" in err


def test_tensorboard_logger_writes_the_metrics_csv_scalars(rerun):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, new_run = rerun
    events = EventAccumulator(str(new_run / "tb"))
    events.Reload()
    rows = read_csv(new_run / "metrics.csv")
    assert set(events.Tags()["scalars"]) == set(rows[0]) - {"epoch"}
    for key in ["train_loss", "val_loss", "val_acc", "lr"]:
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in logged] == [int(r["epoch"]) for r in rows]
        assert [v for _, v in logged] == pytest.approx([float(r[key]) for r in rows], rel=1e-5)


def test_predict_recomputes_normalization_for_a_best_pt_without_it(run, tmp_path):
    """Runs saved before best.pt held mean/std: predict falls back to the saved config."""
    from cnnbench.commands.predict import predict

    old = tmp_path / "old-run"
    shutil.copytree(run / ".hydra", old / ".hydra")
    best = torch.load(run / "best.pt", weights_only=True)
    torch.save({k: v for k, v in best.items() if k not in ("mean", "std")}, old / "best.pt")
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(image)
    new_rows = predict(run, [image], tmp_path / "a", device_name="cpu")["rows"]
    old_rows = predict(old, [image], tmp_path / "b", device_name="cpu")["rows"]
    assert old_rows == new_rows and len(new_rows) == 1


def test_a_missing_run_dir_or_export_is_named_as_missing(tmp_path):
    """Not "no finished epoch ... rerun it": the path itself is not there (a typo)."""
    from cnnbench.errors import CnnbenchError
    from cnnbench.train import load_best

    with pytest.raises(CnnbenchError, match=r"/nowhere: no such run directory$"):
        load_best(tmp_path / "nowhere")
    with pytest.raises(CnnbenchError, match=r"/model.onnx: no such file$"):
        load_best(tmp_path / "export" / "model.onnx")

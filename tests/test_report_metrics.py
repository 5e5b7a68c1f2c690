"""The evaluation report on a known confusion matrix, every figure worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnbench.report_metrics import calibration, confident_mistakes, evaluation_report

CLASSES = ["cat", "dog", "bird"]
# (true class, probabilities): the confusion matrix (rows true, columns predicted) is
#   cat  [3, 1, 0]
#   dog  [1, 2, 0]
#   bird [0, 2, 1]
# and the top probabilities 0.9, 0.7 and 0.5 fall in bins 13, 10 and 7 of 15.
SAMPLES = [
    (0, [0.90, 0.05, 0.05]),
    (0, [0.90, 0.05, 0.05]),
    (0, [0.70, 0.20, 0.10]),
    (0, [0.05, 0.90, 0.05]),  # cat -> dog at 0.9: the most confident mistake
    (1, [0.05, 0.90, 0.05]),
    (1, [0.25, 0.50, 0.25]),
    (1, [0.70, 0.20, 0.10]),  # dog -> cat at 0.7
    (2, [0.25, 0.25, 0.50]),
    (2, [0.25, 0.50, 0.25]),  # bird -> dog at 0.5
    (2, [0.25, 0.50, 0.25]),  # bird -> dog at 0.5
]
LABELS = torch.tensor([t for t, _ in SAMPLES])
PROBS = torch.tensor([p for _, p in SAMPLES])


def test_per_class_scores_and_averages(tmp_path):
    report = evaluation_report(LABELS, PROBS, CLASSES, out_dir=tmp_path)
    assert report["images"] == 10 and report["accuracy"] == pytest.approx(0.6)
    by_name = {row["class_name"]: row for row in report["per_class"]}
    # precision = correct / predicted, recall = correct / support, F1 = 2PR / (P + R)
    assert by_name["cat"] == dict(class_name="cat", precision=0.75, recall=0.75, f1=0.75, support=4)
    assert by_name["dog"] == pytest.approx(
        dict(class_name="dog", precision=2 / 5, recall=2 / 3, f1=0.5, support=3), abs=1e-6
    )
    assert by_name["bird"] == pytest.approx(
        dict(class_name="bird", precision=1.0, recall=1 / 3, f1=0.5, support=3), abs=1e-6
    )
    assert report["macro_avg"] == pytest.approx(
        dict(
            precision=(0.75 + 0.4 + 1) / 3,
            recall=(0.75 + 2 / 3 + 1 / 3) / 3,
            f1=1.75 / 3,
            support=10,
        ),
        abs=1e-6,
    )
    assert report["weighted_avg"] == pytest.approx(
        dict(precision=(4 * 0.75 + 3 * 0.4 + 3 * 1) / 10, recall=0.6, f1=0.6, support=10),
        abs=1e-6,
    )


def test_top_confusions_most_frequent_first(tmp_path):
    report = evaluation_report(LABELS, PROBS, CLASSES, out_dir=tmp_path)  # no images
    assert [m["index"] for m in report["misclassified"]] == [3, 6, 8, 9]
    assert report["files"] == dict(
        reliability=str(tmp_path / "reliability.png"), misclassified=None
    )
    assert report["top_confusions"] == [
        dict(true="bird", predicted="dog", count=2),
        dict(true="cat", predicted="dog", count=1),  # ties: in confusion-matrix order
        dict(true="dog", predicted="cat", count=1),
    ]


def test_expected_calibration_error(tmp_path):
    report = evaluation_report(LABELS, PROBS, CLASSES, out_dir=tmp_path)
    cal = report["calibration"]
    # bin 13 (0.9): 4 images, 3 right -> |0.75 - 0.9| = 0.15 with weight 4/10
    # bin 10 (0.7): 2 images, 1 right -> |0.5 - 0.7| = 0.2 with weight 2/10
    # bin 7 (0.5): 4 images, 2 right -> |0.5 - 0.5| = 0
    assert cal["ece"] == pytest.approx(0.4 * 0.15 + 0.2 * 0.2 + 0.0)
    assert cal["n_bins"] == 15 and len(cal["bins"]) == 15
    filled = {i: b for i, b in enumerate(cal["bins"]) if b["count"]}
    assert sorted(filled) == [7, 10, 13]
    assert filled[13] == pytest.approx(
        dict(lower=13 / 15, upper=14 / 15, count=4, accuracy=0.75, confidence=0.9), abs=1e-6
    )
    assert cal["bins"][0]["accuracy"] is None  # empty bins: no figures
    assert cal["mean_confidence"] == pytest.approx((0.9 * 4 + 0.7 * 2 + 0.5 * 4) / 10)


def test_calibration_bin_edges_and_a_perfect_model():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    cal = calibration(labels, probs.argmax(1), probs.max(1))
    assert cal["ece"] == 0.0 and cal["bins"][-1]["count"] == 4  # confidence 1.0: last bin
    edge = np.array([[0.6, 0.4]] * 2)  # 0.6 = 9/15 exactly: bin 8, (8/15, 9/15]
    cal = calibration(np.array([0, 1]), edge.argmax(1), edge.max(1))
    assert cal["bins"][8]["count"] == 2 and cal["ece"] == pytest.approx(0.1)


def test_confident_mistakes_and_the_misclassified_grid(tmp_path):
    probs = PROBS.numpy().astype(float)
    assert confident_mistakes(LABELS.numpy(), probs.argmax(1), probs.max(1)) == [3, 6, 8, 9]
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (10, 3, 16, 16), dtype=np.uint8))
    report = evaluation_report(LABELS, PROBS, CLASSES, images, out_dir=tmp_path)
    assert report["misclassified"][0] == dict(index=3, true="cat", predicted="dog", confidence=0.9)
    assert [m["index"] for m in report["misclassified"]] == [3, 6, 8, 9]
    for name in ("reliability.png", "misclassified.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 150
    assert report["files"]["misclassified"] == str(tmp_path / "misclassified.png")
    json.dumps(report)  # JSON-able as it is

    gray = images[:, :1]  # 1-channel images work too; no mistakes: no grid
    perfect = torch.nn.functional.one_hot(LABELS, 3).float()
    report = evaluation_report(LABELS, perfect, CLASSES, gray, out_dir=tmp_path)
    assert report["misclassified"] == [] and report["files"]["misclassified"] is None
    assert not (tmp_path / "misclassified.png").exists()  # the earlier one is gone
    assert report["accuracy"] == 1.0 and report["top_confusions"] == []


def test_bad_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="3 classes"):
        evaluation_report(LABELS, PROBS[:, :2], CLASSES, out_dir=tmp_path)
    with pytest.raises(ValueError, match="labels must be N"):
        evaluation_report(LABELS[:5], PROBS, CLASSES, out_dir=tmp_path)

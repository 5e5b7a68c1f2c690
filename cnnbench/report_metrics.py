"""Evaluation report: what a model gets wrong and how far its confidence can be trusted.

Pure functions of the true labels and the predicted probabilities (softmax outputs; the
predicted class is their argmax): per-class precision, recall, F1 and support with macro and
weighted averages, the most frequent confusions, calibration (expected calibration error over
equal-width confidence bins) and the most confident mistakes. `evaluation_report` puts them
together and draws reliability.png and misclassified.png.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15
TOP_CONFUSIONS = 10
MAX_MISTAKES = 24  # images in misclassified.png
_NAME_CHARS = 16  # class names longer than this are cut in misclassified.png's titles


def _as_numpy(values: Any, dtype: Any) -> np.ndarray:
    """numpy array from a numpy array, a list or a (CPU or device) torch tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _check(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"labels must be N and probs N x classes, got {labels.shape} and {probs.shape}"
        )
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs has {probs.shape[1]} columns for {len(classes)} classes")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels must lie in 0..{len(classes) - 1}")


def _rounded(value: float) -> float:
    return round(float(value), 6)


def per_class_scores(
    labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy; precision, recall, F1, support per class and their macro/weighted averages.

    A class never predicted has precision 0 (and a class absent from the labels recall 0),
    scikit-learn's zero_division=0.
    """
    from sklearn.metrics import classification_report

    ids = list(range(len(classes)))
    report = classification_report(labels, predicted, labels=ids, output_dict=True, zero_division=0)

    def scores(entry: dict[str, float]) -> dict[str, Any]:
        return dict(
            precision=_rounded(entry["precision"]),
            recall=_rounded(entry["recall"]),
            f1=_rounded(entry["f1-score"]),
            support=int(entry["support"]),
        )

    return dict(
        accuracy=_rounded(np.mean(labels == predicted)) if len(labels) else 0.0,
        per_class=[
            dict(class_name=name, **scores(report[str(i)])) for i, name in enumerate(classes)
        ],
        macro_avg=scores(report["macro avg"]),
        weighted_avg=scores(report["weighted avg"]),
    )


def top_confusions(
    labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str], k: int = TOP_CONFUSIONS
) -> list[dict[str, Any]]:
    """The `k` most frequent (true -> predicted) mistakes, most frequent first."""
    n = len(classes)
    wrong = labels != predicted  # only the mistakes are counted: no classes x classes matrix
    cells, counts = np.unique(labels[wrong] * n + predicted[wrong], return_counts=True)
    order = np.lexsort((cells, -counts))[:k]  # by count, then row-major
    return [
        dict(true=classes[int(c) // n], predicted=classes[int(c) % n], count=int(counts[i]))
        for i, c in zip(order, cells[order], strict=True)
    ]


def calibration(
    labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS
) -> dict[str, Any]:
    """Expected calibration error over `n_bins` equal-width confidence bins, and the bins.

    Confidence is the top probability; bin b holds lower < confidence <= upper (the first
    bin also takes 0). ECE = sum over bins of (images in bin / N) * |accuracy - confidence|.
    """
    correct = predicted == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.digitize(confidence, edges[1:-1], right=True)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        acc = float(correct[inside].mean()) if count else None
        conf = float(confidence[inside].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(acc - conf)  # type: ignore[operator]
        bins.append(
            dict(
                lower=_rounded(edges[b]),
                upper=_rounded(edges[b + 1]),
                count=count,
                accuracy=None if acc is None else _rounded(acc),
                confidence=None if conf is None else _rounded(conf),
            )
        )
    return dict(
        ece=_rounded(ece),
        n_bins=n_bins,
        mean_confidence=_rounded(confidence.mean()) if len(labels) else 0.0,
        bins=bins,
    )


def confident_mistakes(
    labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, k: int = MAX_MISTAKES
) -> list[int]:
    """Indices of the `k` wrong predictions made with the highest confidence, highest first."""
    wrong = np.flatnonzero(predicted != labels)
    order = np.argsort(-confidence[wrong], kind="stable")
    return [int(i) for i in wrong[order][:k]]


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"


def _pil_image(image: np.ndarray) -> Any:
    """A uint8 C x H x W (C = 1 or 3) image as a PIL image."""
    from PIL import Image

    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"images must be N x C x H x W uint8 with C 1 or 3, got {image.shape}")
    if image.shape[0] == 1:
        return Image.fromarray(image[0])  # L
    return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))  # RGB


def mistake_rows(
    labels: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    classes: Sequence[str],
    k: int = MAX_MISTAKES,
) -> list[dict[str, Any]]:
    """The `k` most confident mistakes: index, true and predicted class, confidence."""
    return [
        dict(
            index=i,
            true=classes[labels[i]],
            predicted=classes[predicted[i]],
            confidence=_rounded(confidence[i]),
        )
        for i in confident_mistakes(labels, predicted, confidence, k)
    ]


def write_mistakes(path: Path, images: Any, rows: list[dict[str, Any]]) -> None:
    """misclassified.png: the images of `rows` (mistake_rows) titled true / predicted."""
    from .plots import write_image_grid

    if not rows:
        Path(path).unlink(missing_ok=True)  # from an earlier report
        return
    picked = [r["index"] for r in rows]
    pixels = _as_numpy(images[picked], np.uint8)
    titles = [
        f"true: {_short(r['true'])}\npred: {_short(r['predicted'])}\n({r['confidence']:.0%})"
        for r in rows
    ]
    write_image_grid(path, [_pil_image(img) for img in pixels], titles, row_height=2.5)


def evaluation_report(
    labels: Any,
    probs: Any,
    classes: Sequence[str],
    images: Any = None,
    *,
    out_dir: Path,
) -> dict[str, Any]:
    """The evaluation report of `probs` (N x classes softmax outputs) against `labels` (N).

    Writes reliability.png into `out_dir`, and misclassified.png (the most confident
    mistakes) when `images` (the N evaluated images, uint8 N x C x H x W tensor or array,
    before normalization) are given and some are misclassified. Returns a JSON-able dict:
    images, accuracy, per_class, macro_avg, weighted_avg, top_confusions, calibration,
    misclassified (the most confident mistakes) and files (the PNGs written, else None).
    """
    labels_np = _as_numpy(labels, np.int64).reshape(-1)
    probs_np = _as_numpy(probs, np.float64)
    classes = [str(c) for c in classes]
    _check(labels_np, probs_np, classes)
    top1 = probs_np.argmax(axis=1)
    return top1_report(labels_np, top1, probs_np.max(axis=1), classes, images, out_dir=out_dir)


def top1_report(
    labels: Any,
    predicted: Any,
    confidence: Any,
    classes: Sequence[str],
    images: Any = None,
    *,
    out_dir: Path,
) -> dict[str, Any]:
    """`evaluation_report` from each image's top-1 class and its probability alone (what a
    model with thousands of classes leaves in memory: no N x classes array)."""
    from .plots import write_reliability_diagram

    labels, predicted = _as_numpy(labels, np.int64), _as_numpy(predicted, np.int64)
    confidence = _as_numpy(confidence, np.float64)
    classes = [str(c) for c in classes]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = dict(images=len(labels))
    report.update(per_class_scores(labels, predicted, classes))
    report["top_confusions"] = top_confusions(labels, predicted, classes)
    report["calibration"] = calibration(labels, predicted, confidence)
    files = dict(reliability=str(out_dir / "reliability.png"), misclassified=None)
    write_reliability_diagram(out_dir / "reliability.png", report["calibration"])
    report["misclassified"] = mistake_rows(labels, predicted, confidence, classes)
    if images is not None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images for {len(labels)} labels")
        path = out_dir / "misclassified.png"
        write_mistakes(path, images, report["misclassified"])
        files["misclassified"] = str(path) if report["misclassified"] else None
    report["files"] = files
    return report

"""End to end on the real CIFAR-10 (JPEG copy in ../shared/data): stats and a short training run.

Skipped when the archive is absent. The archive is extracted once per session into a temp dir;
the first command decodes the 60,000 JPEGs into the (temp) cache, the second reuses it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile

import pytest
from conftest import SHARED_DATA, read_json

ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
SEED_000_MEAN = (0.4914, 0.4822, 0.4465)
SEED_000_STD = (0.2470, 0.2435, 0.2616)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

pytestmark = pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} is absent")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """(root of the extracted cifar/{train,test}/<class>/*.jpg, a shared cache dir)."""
    where = tmp_path_factory.mktemp("cifar10-jpeg")
    if shutil.which("tar"):
        subprocess.run(["tar", "xzf", str(ARCHIVE), "-C", str(where)], check=True)
    else:
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(where, filter="data")
    return where / "cifar", where / "cache"


def folder_args(cifar) -> list[str]:
    root, cache = cifar
    return ["dataset=folder", f"dataset.root={root}", f"dataset.cache_dir={cache}"]


def test_stats_reproduce_seed_000_on_the_real_train_set(cli, cifar):
    proc = cli("stats", *folder_args(cifar))
    assert "dataset folder: 45,000 training images (3x32x32), 10 classes, 0 files skipped" in (
        proc.stdout
    )
    mean = [float(v) for v in re.search(r"mean: (.*)", proc.stdout).group(1).split()]
    std = [float(v) for v in re.search(r"std: +(.*)", proc.stdout).group(1).split()]
    assert mean == pytest.approx(SEED_000_MEAN, abs=0.005)
    assert std == pytest.approx(SEED_000_STD, abs=0.005)


def test_lenet5_trains_one_epoch_on_the_jpeg_folder_well_above_chance(cli, cifar, tmp_path):
    decoded_before = (cifar[1] / "folders").is_dir()  # by the stats test
    proc = cli(
        "train",
        *folder_args(cifar),
        "model=lenet5",
        "transforms=cifar",
        "epochs=1",
        "batch_size=128",
        "device=cpu",
        "device.threads=1",  # the fastest on a shared 2-core machine
        "progress=false",
        "hydra.run.dir=run",
    )
    log = proc.stdout + proc.stderr
    assert "45000 train / 5000 val / 10000 test images, 10 classes" in log
    if decoded_before:
        assert log.count("checked images from the cache") == 2  # train/ and test/: no decoding
    results = read_json(tmp_path / "run" / "results.json")
    assert results["classes"] == CLASSES
    assert results["test_top1"] > 0.35  # chance is 0.10
    assert not (tmp_path / "run" / "skipped_files.txt").exists()

"""The memory-mapped decoded cache (dataset.cache=disk / auto above max_memory_mb): same batches
as in memory, crash-safe writes, DDP shards, full disks; and the CUDA data path's plumbing."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import resource
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from test_data import load, write_images

from cnnbench.config import Precision, compose_checked
from cnnbench.data import ImageFiles, ImageTensors, MappedImages, TensorLoader, build_transforms
from cnnbench.data import loader as loader_module
from cnnbench.data import mapped as mapped_module
from cnnbench.device import autocast_for, grad_scaler_for, resolve_device
from cnnbench.errors import CnnbenchError

CPU = torch.device("cpu")
SIZE = "dataset.image_size=16"


@pytest.fixture
def pets(tmp_path):
    root = tmp_path / "pets"
    write_images(root / "cat", 24, (200, 60, 60), seed=1)
    write_images(root / "dog", 24, (60, 60, 200), seed=2)
    return root


def cache_files(tmp_path, pattern: str = "*.u8") -> list:
    return sorted((tmp_path / "cache" / "folders").glob(pattern))


def batches(split, *, shuffle=True, seed=5, rank=0, world=1, preset="cifar", batch=8):
    tcfg = compose_checked([f"transforms={preset}"]).transforms
    train_tf, eval_tf = build_transforms(tcfg, ([0.5] * 3, [0.25] * 3), 3)
    tf = train_tf if shuffle else eval_tf
    loader = TensorLoader(
        split, batch, tf, CPU, shuffle=shuffle, seed=seed, rank=rank, world_size=world
    )
    loader.set_epoch(2)
    return list(loader)


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ---------------------------------------------------------------- same data as in memory


def test_mapped_cache_gives_the_same_batches_as_in_memory(tmp_path, pets, monkeypatch, caplog):
    memory = load(pets, tmp_path, SIZE)
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        disk = load(pets, tmp_path, SIZE, "dataset.cache=disk")
    assert isinstance(memory.train, ImageTensors) and isinstance(disk.train, MappedImages)
    assert "into the memory-mapped cache" in caplog.text and "MB free there" in caplog.text
    (path,) = cache_files(tmp_path)
    assert cache_files(tmp_path, ".*.tmp") == []
    # 48 images of 3 x 16 x 16 after a 4 KB header, then labels, sums, index and footer.
    assert 4096 + 48 * 768 < path.stat().st_size < 4096 + 48 * 768 + 48 * 56 + 4096
    for split in ("train", "val", "test"):
        a, b = getattr(memory, split), getattr(disk, split)
        assert a.files == b.files and torch.equal(a.labels, b.labels)
        assert torch.equal(b.images[list(range(len(b)))], a.images)
        assert_same_batches(batches(a, shuffle=False), batches(b, shuffle=False))
    assert disk.train_stats() == memory.train_stats()
    assert_same_batches(batches(memory.train), batches(disk.train))
    assert_same_batches(
        batches(memory.train, preset="rrc224", batch=5),
        batches(disk.train, preset="rrc224", batch=5),
    )

    def no_decoding(*args, **kw):
        raise AssertionError("the second load must read the cache file, not decode")

    monkeypatch.setattr("cnnbench.data.folder.decode_file", no_decoding)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        again = load(pets, tmp_path, SIZE, "dataset.cache=disk")
    assert "48 checked images from the memory-mapped cache" in caplog.text
    assert_same_batches(batches(memory.train), batches(again.train))


def test_cache_modes_choose_where_the_pixels_live(tmp_path, pets):
    def kind(*extra: str) -> type:
        return type(load(pets, tmp_path, SIZE, *extra).train)

    assert kind() is ImageTensors  # auto, fits max_memory_mb
    assert kind("dataset.max_memory_mb=0") is MappedImages  # auto, too large: mapped
    assert kind("dataset.max_memory_mb=0", "dataset.cache=off") is ImageFiles  # streamed
    assert kind("dataset.max_memory_mb=0", "dataset.cache=memory") is ImageTensors
    assert kind("dataset.cache=disk") is MappedImages
    with pytest.raises(CnnbenchError, match="dataset.cache=memory: .* use dataset.cache=disk"):
        load(pets, tmp_path, "dataset.image_size=100000", "dataset.cache=memory")


def test_training_on_the_mapped_cache_matches_memory_exactly(cli, tmp_path, pets):
    def metrics(run: str, *extra: str) -> list[list[str]]:
        cli(
            "train",
            "dataset=folder",
            f"dataset.root={pets}",
            f"dataset.cache_dir={tmp_path / 'cache'}",
            "dataset.image_size=32",
            "model=lenet5",
            "transforms=cifar",
            "epochs=2",
            "batch_size=8",
            "device=cpu",
            "progress=false",
            f"hydra.run.dir={run}",
            *extra,
        )
        rows = list(csv.reader((tmp_path / run / "metrics.csv").open()))
        return [row[:-1] for row in rows]  # all but the wall-clock `seconds` column

    assert metrics("disk", "dataset.cache=disk") == metrics("memory", "dataset.cache=memory")
    assert len(cache_files(tmp_path)) == 1


# ---------------------------------------------------------------- crash safety


KILL_MID_WRITE = """
import os, signal, sys
from cnnbench.data import mapped
put = mapped.DiskSink.put

def put_then_die(self, image):
    put(self, image)
    if self.rows == 20:
        self.file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

mapped.DiskSink.put = put_then_die
from cnnbench.config import compose_checked
from cnnbench.data import load_dataset
cfg = compose_checked(sys.argv[1:])
load_dataset(cfg.dataset, cfg.transforms, num_workers=0, progress=False)
"""


def test_a_write_killed_mid_way_is_never_read(tmp_path, pets, caplog):
    overrides = ["dataset=folder", f"dataset.root={pets}", SIZE, "dataset.cache=disk"]
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MID_WRITE, *overrides, f"dataset.cache_dir={tmp_path}/cache"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    assert cache_files(tmp_path) == []  # nothing under the cache's name
    (partial,) = cache_files(tmp_path, ".*.tmp")
    assert partial.stat().st_size >= 4096 + 20 * 768
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        disk = load(pets, tmp_path, SIZE, "dataset.cache=disk")
    assert "decoding at 16x16 into the memory-mapped cache" in caplog.text
    assert cache_files(tmp_path, ".*.tmp") == []  # the killed writer's file is removed
    memory = load(pets, tmp_path, SIZE)
    assert_same_batches(batches(memory.train), batches(disk.train))


def test_only_temp_files_of_dead_writers_are_removed(tmp_path):
    import fcntl

    live, dead = tmp_path / ".a.u8.live.tmp", tmp_path / ".b.u8.dead.tmp"
    other = tmp_path / ".c.pt.x.tmp"  # a checkpoint-style temp file: not ours
    for path in (live, dead, other):
        path.write_bytes(b"partial")
    with open(live, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # as DiskSink holds its temp file
        mapped_module.remove_dead_temps(tmp_path)
    assert live.exists() and other.exists() and not dead.exists()


@pytest.mark.parametrize("damage", ["truncated", "no footer", "header zeroed", "other key"])
def test_a_damaged_cache_file_is_rebuilt_not_read(tmp_path, pets, caplog, damage):
    memory = load(pets, tmp_path, SIZE)
    load(pets, tmp_path, SIZE, "dataset.cache=disk")
    (path,) = cache_files(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "no footer":
        path.write_bytes(data[:-16])
    elif damage == "header zeroed":
        path.write_bytes(bytes(4096) + data[4096:])
    else:  # a complete file of another folder copied over this one's name
        path.write_bytes(data.replace(path.stem.encode(), b"0" * len(path.stem), 1))
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        disk = load(pets, tmp_path, SIZE, "dataset.cache=disk")
    assert f"ignoring the incomplete or damaged cache file {path}" in caplog.text
    assert "decoding at 16x16 into the memory-mapped cache" in caplog.text
    assert path.read_bytes() == data  # rebuilt, byte for byte
    assert_same_batches(batches(memory.train), batches(disk.train))


# ---------------------------------------------------------------- DDP


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_shard_the_mapped_file_disjointly_and_cover_the_epoch(tmp_path, pets, world):
    memory = load(pets, tmp_path, SIZE).train
    disk = load(pets, tmp_path, SIZE, "dataset.cache=disk").train
    n = len(disk) - len(disk) % world  # a multiple of world: no wrap-around padding
    ids = torch.arange(n)  # labels replaced by sample ids, to see who trains on what
    disk = dataclasses.replace(disk.subset(ids), labels=ids)
    memory = ImageTensors(memory.images[:n], ids)
    assert not torch.equal(disk.rows, ids)  # a carved split: rows are scattered in the file
    seen = []
    for rank in range(world):
        mapped = batches(disk, rank=rank, world=world, preset="basic")
        assert_same_batches(mapped, batches(memory, rank=rank, world=world, preset="basic"))
        seen.append([i for _, y in mapped for i in y.tolist()])
        for x, y in mapped:  # each sample's own pixels
            expected = memory.images.index_select(0, y).float()
            assert torch.allclose(x, (expected / 255 - 0.5) / 0.25, atol=1e-5)
    assert len({len(s) for s in seen}) == 1  # the same number of steps on every rank
    everything = [i for s in seen for i in s]
    assert sorted(everything) == list(range(n))  # disjoint, and together the whole epoch


# ---------------------------------------------------------------- full disks


def small_disk(monkeypatch, free: int, total: int = 10**12) -> None:
    usage = shutil.disk_usage("/")._replace(total=total, used=total - free, free=free)
    monkeypatch.setattr(mapped_module.shutil, "disk_usage", lambda path: usage)


def test_too_little_free_space_stops_before_decoding(tmp_path, pets, monkeypatch):
    small_disk(monkeypatch, free=1000)
    with pytest.raises(CnnbenchError) as err:
        load(pets, tmp_path, SIZE, "dataset.cache=disk")
    text = str(err.value)
    assert "needs 0.035 MB but" in text and "has 0.00095 MB free" in text
    assert "dataset.cache_dir" in text and "dataset.cache=off" in text
    assert cache_files(tmp_path) == cache_files(tmp_path, ".*.tmp") == []


def test_auto_streams_when_the_cache_would_nearly_fill_the_disk(
    tmp_path, pets, monkeypatch, caplog
):
    small_disk(monkeypatch, free=60_000, total=1_000_000)  # 0.035 MB + 5% of 1 MB > 60 KB
    with caplog.at_level(logging.WARNING, logger="cnnbench"):
        data = load(pets, tmp_path, SIZE, "dataset.max_memory_mb=0")
    assert isinstance(data.train, ImageFiles)
    assert "the memory-mapped cache would take 0.035 MB" in caplog.text
    assert "streaming instead" in caplog.text and cache_files(tmp_path) == []
    small_disk(monkeypatch, free=90_000, total=1_000_000)  # fits, leaving 5% free
    assert isinstance(load(pets, tmp_path, SIZE, "dataset.max_memory_mb=0").train, MappedImages)
    small_disk(monkeypatch, free=0)  # complete files need no space
    assert isinstance(load(pets, tmp_path, SIZE, "dataset.max_memory_mb=0").train, MappedImages)


LIMIT = 40_000  # RLIMIT_FSIZE: writes past 40 KB fail (EFBIG) as on a full disk (ENOSPC)


def small_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def test_a_full_disk_is_one_error_line(tmp_path, pets):
    """The cache file needs 48 x 3 x 32 x 32 = 147 KB; reserving it (fallocate) fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "cnnbench", "train", "dataset=folder", f"dataset.root={pets}"]
        + [f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.image_size=32"]
        + ["dataset.cache=disk", "epochs=1", "device=cpu", "progress=false"]
        + [f"hydra.run.dir={tmp_path / 'run'}"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "error: out of space writing the decoded cache of" in errors[0]
    assert "(File too large after 0 MB; the partial file is removed)" in errors[0]
    assert "point dataset.cache_dir at a larger disk, or set dataset.cache=off" in errors[0]
    assert cache_files(tmp_path) == cache_files(tmp_path, ".*.tmp") == []


def test_a_disk_filling_up_mid_write_removes_the_partial_file(tmp_path, pets, monkeypatch):
    """Without fallocate (file systems that lack it) the writes themselves fail."""
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, length: None)
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    small_files()
    try:
        with pytest.raises(CnnbenchError) as err:
            load(pets, tmp_path, "dataset.image_size=32", "dataset.cache=disk")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
    assert str(err.value).startswith("out of space writing the decoded cache of")
    assert "File too large after" in str(err.value)
    assert cache_files(tmp_path) == cache_files(tmp_path, ".*.tmp") == []


# ---------------------------------------------------------------- the CUDA data path: plumbing


def test_in_memory_sets_live_on_the_gpu_only_when_they_fit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    cuda = torch.device("cuda", 0)
    assert loader_module.fits_on_device(500, cuda)  # half of the free memory
    assert not loader_module.fits_on_device(501, cuda)
    assert loader_module.fits_on_device(10**15, CPU)  # CPU sets stay where they are


def test_cuda_runs_turn_cudnn_benchmark_on(monkeypatch):
    dcfg = compose_checked(["device=cuda"]).device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert resolve_device(dcfg) == torch.device("cuda")
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch warns: no CUDA to autocast/scale on
def test_fp16_gets_a_grad_scaler_and_bf16_autocasts_without_one():
    cuda = torch.device("cuda")
    assert isinstance(grad_scaler_for(Precision.fp16, cuda), torch.amp.GradScaler)
    assert grad_scaler_for(Precision.bf16, cuda) is None
    assert grad_scaler_for(Precision.fp32, cuda) is None
    assert autocast_for(Precision.fp16, cuda).fast_dtype == torch.float16
    assert autocast_for(Precision.bf16, cuda).fast_dtype == torch.bfloat16
    assert autocast_for(Precision.bf16, CPU).fast_dtype == torch.bfloat16
    assert autocast_for(Precision.fp32, CPU) is None


# ---------------------------------------------------------------- the benchmark script runs


def test_big_folder_bench_runs_every_variant_and_reports_ratios(tmp_path):
    for name, color in (("cat", (200, 60, 60)), ("dog", (60, 60, 200))):
        write_images(tmp_path / "cifar" / name, 20, color, size=(32, 32))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "big_folder_bench.py"), "--cifar"]
        + [str(tmp_path / "cifar"), "--folder", str(tmp_path / "big"), "--images", "40"]
        + ["--sizes", "32", "--rounds", "1", "--batch", "8", "--workers", "0"]
        + ["--cache-dir", str(tmp_path / "cache"), "--json", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "made 40 512x384 JPEGs" in proc.stdout and "32x32 model" in proc.stdout
    (result,) = json.loads(out.read_text())["results"]
    assert result["cache_mb"] == pytest.approx(40 * 3 * 32 * 32 / 2**20, rel=0.1)
    for kind in ("augment", "plain", "model"):
        assert set(result[f"ratios_{kind}"]) == {"a", "b", "d"}
        assert all(rate > 0 for rate in result[f"median_{kind}"].values())

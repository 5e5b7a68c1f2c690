"""logger=mlflow and logger=wandb, offline: what they store reads back with the tools' own
readers. The logger classes get fake metrics.csv rows; one train run goes through the CLI."""

from __future__ import annotations

import struct
import sys
import time

import pytest
from conftest import TINY
from omegaconf import OmegaConf

from cnnbench.errors import CnnbenchError
from cnnbench.loggers import MLflowLogger, NullLogger, WandbLogger, open_logger

CONFIG = {"model": {"name": "lenet5"}, "optimizer": {"lr": 0.001, "betas": [0.9, 0.99]}}
ROWS = [
    dict(epoch=e, train_loss=2.0 / e, train_acc=0.1 * e, val_loss=2.5 / e, val_acc=0.2 * e,
         lr=0.001, seconds=1.5)
    for e in (1, 2, 3)
]  # fmt: skip
PARAMS = {"model.name": "lenet5", "optimizer.lr": "0.001", "optimizer.betas": "[0.9, 0.99]"}


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def only_run(client):
    experiment = client.get_experiment_by_name("cnnbench")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_mlflow_run_reads_back_params_metrics_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install 'cnnbench[mlflow]'")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    config = OmegaConf.create({**CONFIG, "resume": None})
    logger = open_logger(OmegaConf.create({"name": "mlflow"}), tmp_path, config)
    assert isinstance(logger, MLflowLogger)
    for row in ROWS[:2]:
        logger.log(row)
    (tmp_path / "best.pt").write_bytes(b"weights")
    (tmp_path / "curves.png").write_bytes(b"png")
    logger.close()

    client = mlflow_client(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = only_run(client)
    assert (
        run.info.status == "FINISHED"
        and run.info.run_name == f"{tmp_path.parent.name}/{tmp_path.name}"
    )
    assert run.data.params == PARAMS  # flattened, without `resume`
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 1.25)]
    assert set(run.data.metrics) == {
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "seconds",
    }
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "best.pt",
        "curves.png",
    ]
    artifacts = tmp_path / "mlruns" / "artifacts"
    assert (next(artifacts.glob("*/artifacts/best.pt"))).read_bytes() == b"weights"

    assert (tmp_path / "mlflow_run_id.txt").read_text() == run.info.run_id + "\n"

    # A resume of the same run dir continues the same MLflow run
    logger = MLflowLogger(tmp_path, config)
    logger.log(ROWS[2])
    logger.close()
    run = only_run(client)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3] and run.info.status == "FINISHED"


def test_mlflow_tracking_uri_and_the_saved_config(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI wins over RUN_DIR/mlruns; without a config the saved one is used."""
    pytest.importorskip("mlflow", reason="pip install 'cnnbench[mlflow]'")
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(CONFIG))
    logger = MLflowLogger(run_dir)
    logger.log(ROWS[0])
    logger.close()
    assert not (run_dir / "mlruns").exists()
    run = only_run(mlflow_client(uri))
    assert run.data.params == PARAMS and run.data.metrics["val_acc"] == pytest.approx(0.2)


def read_wandb_records(path) -> list:
    """Records of a .wandb file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def item_key(item) -> str:
    """A history or config item's key (`key`, or `nested_key` parts)."""
    return item.key or ".".join(item.nested_key)


def wandb_records_when_written(path, timeout: float = 30.0) -> list:
    """The file's records once wandb's writer process has written the run's exit record
    (it flushes the file on its own after run.finish() returns)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"no exit record in {path} after {timeout} s"
        time.sleep(0.2)


def test_wandb_offline_run_holds_the_config_and_history(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install 'cnnbench[wandb]'")
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    logger = open_logger(OmegaConf.create({"name": "wandb"}), tmp_path, OmegaConf.create(CONFIG))
    assert isinstance(logger, WandbLogger)
    for row in ROWS:
        logger.log(row)
    logger.close()

    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")  # offline by default
    records = wandb_records_when_written(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (
        run.project == "cnnbench" and run.display_name == f"{tmp_path.parent.name}/{tmp_path.name}"
    )
    config = {item_key(u): u.value_json for u in run.config.update}
    assert config["optimizer.lr"] == "0.001" and config["model.name"] == '"lenet5"'
    history = [
        {item_key(i): float(i.value_json) for i in r.history.item if item_key(i)[0] != "_"}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert history == [{k: v for k, v in row.items() if k != "epoch"} for row in ROWS]
    steps = [
        int(next(i.value_json for i in r.history.item if item_key(i) == "_step"))
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert steps == [1, 2, 3]  # step = epoch
    assert (tmp_path / "wandb_run_id.txt").read_text() == run.run_id + "\n"

    # A resume of the same run dir logs to the same wandb run id (merged when synced)
    logger = WandbLogger(tmp_path)
    logger.log({**ROWS[-1], "epoch": 4})
    logger.close()
    assert len(list(tmp_path.glob(f"wandb/offline-run-*/run-{run.run_id}.wandb"))) == 2


@pytest.mark.parametrize(
    ("name", "modules"), [("mlflow", ["mlflow", "mlflow.tracking"]), ("wandb", ["wandb"])]
)
def test_a_missing_extra_is_named(name, modules, tmp_path, monkeypatch):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(CnnbenchError, match=rf"pip install 'cnnbench\[{name}\]'"):
        open_logger(OmegaConf.create({"name": name}), tmp_path)


def test_open_logger_is_backward_compatible(tmp_path):
    assert isinstance(open_logger(OmegaConf.create({"name": "none"}), tmp_path), NullLogger)
    with pytest.raises(CnnbenchError, match="valid loggers: none, tensorboard, mlflow, wandb"):
        open_logger(OmegaConf.create({"name": "neptune"}), tmp_path)


def test_train_with_logger_mlflow(cli, tmp_path, monkeypatch):
    """The real train command: params from the run's saved config, one metric per epoch."""
    pytest.importorskip("mlflow", reason="pip install 'cnnbench[mlflow]'")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cli("train", *TINY, "hydra.run.dir=run", "logger=mlflow", "optimizer.lr=0.003")
    client = mlflow_client(f"sqlite:///{tmp_path / 'run' / 'mlruns' / 'mlflow.db'}")
    run = only_run(client)
    assert run.data.params["optimizer.lr"] == "0.003" and run.data.params["epochs"] == "2"
    assert "resume" not in run.data.params
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "best.pt",
        "curves.png",
    ]

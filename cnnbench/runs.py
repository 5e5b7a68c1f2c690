"""Run directories: find them, and re-enter one from its saved config (resume, rerun)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import GROUPS, PATH_KEYS, group_options
from .errors import CnnbenchError
from .flatconfig import IGNORED, flat_config, to_plain

SAVED_CONFIG = Path(".hydra") / "config.yaml"
PRIMARY_NAME = "saved_run"
OVERRIDES, HISTORY = "overrides.yaml", "overrides_history.yaml"  # in a run's .hydra/


def saved_config(run_dir: Path) -> Any:
    """The full config a run was started with (its `.hydra/config.yaml`), checked first: a
    readable YAML mapping of plain values. A damaged file, a `_target_` or an interpolation
    that calls a resolver (`${oc.env:...}`, which would read this machine's environment into
    a copied run's config and its messages) is one error naming the file."""
    path = Path(run_dir) / SAVED_CONFIG
    if not path.is_file():
        raise CnnbenchError(f"{run_dir} is not a cnnbench run directory (no {SAVED_CONFIG})")
    fix = (
        "cnnbench needs it to continue, evaluate or rerun the run: restore the file (e.g. "
        "from a copy of the run)"
    )
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml's errors (duplicate keys, !!python tags), not UTF-8, ...
        raise CnnbenchError(f"{path} is damaged ({_yaml_gist(err)}); {fix}") from None
    problem = _saved_config_problem(cfg)
    if problem:
        raise CnnbenchError(f"{path} {problem}; {fix}")
    return cfg


def _yaml_gist(err: BaseException) -> str:
    """'found duplicate key seed (line 12)' from a YAML error; the first line of others."""
    problem = getattr(err, "problem", None) or (str(err).splitlines() or [""])[0]
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    return f"{problem or err.__class__.__name__}{where}"


_RESOLVER = re.compile(r"\$\{\s*([\w.-]+)\s*:")  # ${oc.env:HOME}, ${now:...}: not ${epochs}


def _saved_config_problem(cfg: Any) -> str | None:
    """What makes a loaded saved config unusable, or None."""
    if not isinstance(cfg, DictConfig) or not cfg:
        return "is empty or not a mapping of config keys"
    data = OmegaConf.to_container(cfg, resolve=False)
    if not all(isinstance(data.get(k), dict) for k in ("model", "dataset")):
        return "is not a cnnbench run config (it has no model and dataset sections)"
    for key, value in _walk(data):
        if key.rsplit(".", 1)[-1] in ("_target_", "_partial_", "_args_"):
            return f"holds {key!r}: a cnnbench config never names code to instantiate"
        found = _RESOLVER.search(value) if isinstance(value, str) else None
        if found:
            return (
                f"sets {key} to an interpolation that calls the resolver {found.group(1)!r} "
                "(${" + found.group(1) + ":...}); a saved run is read without resolving "
                "anything but its own keys, so it cannot read this machine's environment: "
                "put the plain value in the file"
            )
    return None


def _walk(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every entry of nested dicts and lists."""
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        name = f"{prefix}{key}"
        yield name, value
        if isinstance(value, (dict, list)):
            yield from _walk(value, f"{name}.")


def _hydra_record(run_dir: Path, key: str) -> str | None:
    """A plain value Hydra recorded in `.hydra/hydra.yaml` (None when absent, damaged or an
    interpolation: nothing there is resolved)."""
    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    try:
        node: Any = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for part in key.split("."):
            node = node[part]
    except Exception:
        return None
    return str(node) if isinstance(node, (str, int, float)) and "${" not in str(node) else None


def launch_dir(run_dir: Path) -> Path | None:
    """The working directory the run was started from (Hydra's runtime.cwd), if recorded."""
    cwd = _hydra_record(run_dir, "hydra.runtime.cwd")
    return Path(cwd) if cwd else None


def overridden_groups(overrides: Sequence[str]) -> list[str]:
    """Groups picked anew on the command line (`model=alexnet_cifar`, `optimizer=sgd,adam`)."""
    return [o.split("=", 1)[0] for o in overrides if "=" in o and o.split("=", 1)[0] in GROUPS]


def saved_choice(run_dir: Path, cfg: Any, group: str) -> str | None:
    """The option of `group` a saved run was composed from: its node's own name when that
    is an option (a user's YAML that extends `folder` counts as folder), else Hydra's record."""
    options = group_options(group)
    name = OmegaConf.select(cfg, f"{group}.name")
    if name is not None and str(name) in options:
        return str(name)
    recorded = _hydra_record(run_dir, f"hydra.runtime.choices.{group}")
    return recorded if recorded in options else None


def _defaults_list(run_dir: Path, cfg: Any, picked: list[str]) -> str:
    """The defaults of a saved run's primary config: each group's saved option (so its
    values are checked by that option's schema); groups `picked` anew are set by overrides."""
    lines = ["defaults:", "  - train_schema"]
    for group in GROUPS:
        choice = "null" if group in picked else saved_choice(run_dir, cfg, group)
        if group != "recipe" and choice is not None:
            lines.append(f"  - {group}: {choice}")
    lines += ["  - override hydra/job_logging: cnnbench", "  - override hydra/help: cnnbench"]
    lines.append("  - _self_")
    if "recipe" in picked:  # a recipe's values win over the saved ones, as in train.yaml
        lines.append("  - recipe: null")
    return "\n".join(lines) + "\n"


def primary_from_saved(
    run_dir: Path,
    clear: tuple[str, ...] = (),
    anchor_paths: bool = False,
    overrides: Sequence[str] = (),
) -> Path:
    """Write a primary config that re-creates `run_dir`'s config on the typed schema.

    Returns the directory to hand to Hydra as `--config-dir`. Keys in `clear` are reset to
    null (e.g. `resume` for a rerun). `anchor_paths` makes a relative `dataset.root` (and
    `dataset.csv`) absolute against the directory the run was started from (when the data is
    there), so a rerun or an eval works from any working directory. Each group's saved option
    is in the defaults list, so its schema checks the saved values and any override. A group
    picked anew in `overrides` (`model=alexnet_cifar`) replaces the saved group's values: its
    node is left out of the saved body, for the override to select the option.
    """
    cfg = saved_config(run_dir)
    for key in clear:
        if key in cfg:
            cfg[key] = None
    groups = overridden_groups(overrides)
    for group in groups:
        cfg.pop(group, None)
    started_in = launch_dir(run_dir) if anchor_paths else None
    for key in ("root", "csv"):  # dataset=folder/torchvision: root; dataset=csv: csv (and root)
        path = OmegaConf.select(cfg, f"dataset.{key}")
        if path and started_in and not Path(path).expanduser().is_absolute():
            anchored = started_in / path
            if anchored.exists():
                cfg.dataset[key] = str(anchored)
    header = (
        "# Generated by cnnbench from a saved run config.\n"
        + _defaults_list(run_dir, cfg, groups)
        + "hydra:\n  searchpath: [pkg://cnnbench.configs]\n"
    )
    body = OmegaConf.to_yaml(cfg)
    config_dir = Path(tempfile.mkdtemp(prefix="cnnbench-run-"))
    (config_dir / f"{PRIMARY_NAME}.yaml").write_text(header + body)
    return config_dir


def compose_saved(run_dir: Path, overrides: Sequence[str] = ()) -> Any:
    """`run_dir`'s saved config plus `overrides`, composed and checked (eval, predict)."""
    from .config import compose_checked

    config_dir = primary_from_saved(
        run_dir, clear=("resume",), anchor_paths=True, overrides=overrides
    )
    try:
        return compose_checked(
            list(overrides), config_name=PRIMARY_NAME, config_dir=str(config_dir)
        )
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)


def find_runs(root: Path) -> list[Path]:
    """Run dirs (with a saved config) under `root`, newest first."""
    runs = [p.parent.parent for p in Path(root).glob(f"**/{SAVED_CONFIG}")]
    return sorted(runs, key=lambda p: (p / SAVED_CONFIG).stat().st_mtime, reverse=True)


def _comparable(cfg: Any) -> dict:
    """A config as flat keys, without what a resume may change (resume, epochs) or Hydra's."""
    data = flat_config(cfg, resolve=True)
    data.pop("epochs", None)  # resume=auto epochs=30 extends the run it means
    return data


def latest_matching_run(cfg: Any, root: Path) -> Path:
    """The newest run under `root` with a last.pt whose config equals `cfg` (resume=auto),
    `epochs` aside; when none does, the error names the newest run and how it differs."""
    want = _comparable(cfg)
    candidates = [run for run in find_runs(root) if (run / "last.pt").is_file()]
    for run in candidates:
        try:
            if _comparable(saved_config(run)) == want:
                return run
        except Exception:  # a damaged saved config is not this run's: look further
            continue
    why = f"no run with a last.pt under {Path(root).resolve()}"
    if candidates:
        try:
            newest = _comparable(saved_config(candidates[0]))
        except Exception:
            newest = {}
        keys = sorted(k for k in want.keys() | newest.keys() if want.get(k) != newest.get(k))
        diffs = ", ".join(f"{k}={newest.get(k)} there, {want.get(k)} here" for k in keys[:3])
        more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
        why = (
            f"none of the {len(candidates)} run(s) with a last.pt under {Path(root).resolve()} "
            f"has this config; the newest, {candidates[0].resolve()}, differs in {diffs}{more}"
        )
    raise CnnbenchError(
        f"resume=auto: {why}; pass resume=RUN_DIR, or give the overrides that run was started "
        "with (cnnbench train resume=auto ...), or start a new run without resume"
    )


# Keys a resume may change: how the run goes on, not what it learns from (README, When
# things go wrong). batch_size is one: a run out of memory continues with a smaller batch.
RESUME_MAY_CHANGE = (
    "epochs",
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "progress",
    "log_interval",
    "device",
    "dataset.cache",
    "dataset.cache_dir",
    "dataset.max_memory_mb",
    "dataset.download",
)


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in RESUME_MAY_CHANGE)


def check_resume(run_dir: Path, cfg: Any, overrides: Sequence[str]) -> None:
    """Refuse a resume whose overrides would make the saved config lie about the run:
    another value of a key that shapes training (seed, dataset.root, optimizer.lr, ...), or
    fewer epochs than the run has already trained (or none to add to a finished run)."""
    from .checkpoint import load_checkpoint

    old, new = flat_config(saved_config(run_dir)), flat_config(cfg)
    touched = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    changed = [
        key
        for key in new
        if any(key == t or key.startswith(f"{t}.") for t in touched)
        and not _may_change(key)
        and old.get(key) != new[key]
    ]
    if changed:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed)
        raise CnnbenchError(
            f"resume={run_dir} cannot change {shown}: a resumed run keeps the values it was "
            "started with, so its saved config stays true for the whole run. A resume may "
            f"change only {', '.join(RESUME_MAY_CHANGE)}. To train with other values, start a "
            f"new run from this one's config: cnnbench rerun {run_dir} "
            + " ".join(o for o in overrides if o.split("=", 1)[0].lstrip("+~") in changed)
        )
    last = load_checkpoint(Path(run_dir) / "last.pt", mmap=True)
    done, partial = int(last.get("epoch", 0)), last.get("partial") is not None
    finished = (Path(run_dir) / "results.json").is_file() and not partial
    if cfg.epochs < done + partial or (finished and cfg.epochs == done):
        trained = f"{done} epoch(s)" + (f" and part of epoch {done + 1}" if partial else "")
        if finished and cosine_ended(last.get("scheduler") or {}):
            way = "its cosine schedule has ended (more epochs would train at min_lr), so "
            way += fresh_schedule_hint(str(run_dir))
        else:
            way = f"so pass epochs={max(done + 1, cfg.epochs + 1)} or more, or start a new run"
        raise CnnbenchError(
            f"resume={run_dir} epochs={cfg.epochs}: the run has already trained {trained}"
            + (" and is finished" if finished else "")
            + f"; epochs can only grow on resume (the run's history is kept as it is); {way}"
        )


def cosine_ended(schedule: dict[str, Any]) -> bool:
    """True for a cosine schedule's state_dict (after a warmup: SequentialLR's, whose last
    part is the cosine) at its end, where the lr stays at min_lr."""
    schedule = (schedule.get("_schedulers") or [schedule])[-1]
    return "T_max" in schedule and schedule.get("last_epoch", 0) >= schedule["T_max"]


def fresh_schedule_hint(run_dir: str) -> str:
    """The way to train a finished run further at a useful lr: a new run from its weights."""
    weights = shlex.quote(f"model.weights={run_dir}/best.pt")
    return (
        "start a new run from its weights with a fresh schedule: cnnbench rerun "
        f"{shlex.quote(run_dir)} {weights} epochs=N"
    )


@contextmanager
def removed_on_error(config_dir: Path | str) -> Iterator[None]:
    """Remove a generated primary config (/tmp/cnnbench-run-*) when the block fails."""
    try:
        yield
    except BaseException:
        shutil.rmtree(config_dir, ignore_errors=True)
        raise


def quote(value: str) -> str:
    """A Hydra override value that survives any characters (spaces, '=', quotes, `~`).

    Inside Hydra's quotes a backslash is an escape only before a quote or at the end, so
    only those backslashes are doubled (`C:\\data` stays as it is).
    """
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
    return "'" + escaped.replace("'", "\\'") + "'"


def path_overrides(args: Sequence[str]) -> list[str]:
    """Path values as a user types them, made safe for Hydra's override grammar.

    For the keys of `PATH_KEYS` (`dataset.root=~/pets`, `hydra.run.dir=runs/lr=0.1`), a
    leading `~` is expanded (the shell does not expand it after `=`) and a value Hydra cannot
    read as one plain string (`~` inside, `(`, `#`, `=`, `[`, non-ASCII letters...) is quoted;
    quoted values, null, interpolations and sweeps (`a,b`) are passed as typed. `resume=` is
    read by cnnbench itself, so it is only expanded.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out = OverridesParser.create(), []
    for arg in args:
        prefix, key, value = re.match(r"^(\+{0,2})([^=~+]*)=?(.*)$", arg).groups()
        if key not in PATH_KEYS or "=" not in arg or value[:1] in ("'", '"'):
            out.append(arg)
            continue
        value = ",".join(os.path.expanduser(part) for part in value.split(","))
        if key != "resume" and not _plain_value(parser, f"{key}={value}"):
            value = quote(value)
        out.append(f"{prefix}{key}={value}")
    return out


def _plain_value(parser: Any, override: str) -> bool:
    """True when Hydra reads `override`'s value as typed: a string (or number, null) or a
    sweep of those, not a list, a dict or a parse error."""
    try:
        parsed = parser.parse_override(override)
    except Exception:  # Hydra's grammar errors (LexerNoViableAltException, ...)
        return False
    return parsed.is_sweep_override() or not isinstance(parsed.value(), (list, dict))


def split_override(args: list[str], key: str) -> tuple[str | None, list[str]]:
    """Pull `key=value` out of an override list: (value or None, the other overrides)."""
    value, rest = None, []
    for arg in args:
        if arg.startswith(f"{key}="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return value, rest


def planned_hydra(
    overrides: list[str], config_name: str = "train", config_dir: str | None = None
) -> Any:
    """Hydra's own settings (`hydra.*`, ${now:...} resolved now) for these overrides."""
    from hydra import compose, initialize_config_dir, initialize_config_module

    init = (
        initialize_config_dir(config_dir, version_base=None)
        if config_dir
        else initialize_config_module("cnnbench.configs", version_base=None)
    )
    with init:
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        return cfg.hydra


def planned_run_dir(overrides: list[str]) -> Path:
    """The run directory Hydra will create for `cnnbench train OVERRIDES` (hydra.run.dir)."""
    return Path(str(planned_hydra(overrides).run.dir))


def pin_run_dir(args: list[str], run_dir: Path) -> list[str]:
    """`args` with hydra.run.dir fixed to `run_dir` (the default's ${now:...} resolved once),
    so Hydra writes where the checks looked and the lock is held."""
    if any(a.startswith("hydra.run.dir=") for a in args):
        return list(args)
    return [*args, f"hydra.run.dir={quote(str(run_dir))}"]


def check_writable(run_dir: Path) -> None:
    """Fail with one message, before any work, when `run_dir` cannot be created or written."""
    run_dir = Path(run_dir).expanduser().absolute()
    existing = run_dir
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CnnbenchError(
            f"cannot create the run directory {run_dir}: {existing} is a file, not a "
            "directory; choose another hydra.run.dir=PATH"
        )
    _check_name_lengths(run_dir, existing)
    try:  # os.access is not enough: root passes it on read-only file systems
        os.rmdir(tempfile.mkdtemp(prefix=".cnnbench-write-check-", dir=existing))
    except OSError as err:
        raise CnnbenchError(
            f"cannot write the run directory {run_dir}: {existing} is not writable "
            f"({err.strerror or err}); run from a writable directory or choose "
            "hydra.run.dir=PATH"
        ) from None


def _exists(path: Path) -> bool:
    """Path.exists that says False where the path cannot be looked up (a name too long)."""
    try:
        path.stat()
    except OSError:
        return False
    return True


def _check_name_lengths(run_dir: Path, existing: Path) -> None:
    """ENAMETOOLONG before it happens: each new folder name and the whole path must fit."""
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX: the OS will say it
        return
    for name in run_dir.relative_to(existing).parts:
        if len(os.fsencode(name)) > name_max:
            raise CnnbenchError(
                f"cannot create the run directory {run_dir}: the folder name {name[:40]}... is "
                f"{len(os.fsencode(name))} bytes long and this file system allows {name_max}; "
                "choose a shorter hydra.run.dir=PATH"
            )
    if len(os.fsencode(run_dir)) + 64 > path_max:  # room for the files written in it
        raise CnnbenchError(
            f"cannot create the run directory {str(run_dir)[:60]}...: its path is "
            f"{len(os.fsencode(run_dir))} bytes long and this system allows {path_max} for a "
            "file's whole path; choose a shorter hydra.run.dir=PATH"
        )


# ---- a run directory is one run's: never written over, never by two processes at once

RUN_OUTPUTS = ("last.pt", "best.pt", "metrics.csv", "results.json")  # what a new run would replace
LOCK_FILE = Path(".hydra") / "lock"  # flock()ed by the process writing the run dir


def run_outputs(run_dir: Path) -> list[str]:
    """The files of an earlier run in `run_dir` that a new run would replace."""
    return [name for name in RUN_OUTPUTS if (Path(run_dir) / name).exists()]


def _free_dir(run_dir: Path) -> Path:
    """`run_dir` with the first free suffix: outputs/x-2, outputs/x-3, ..."""
    n = 2
    while run_dir.with_name(f"{run_dir.name}-{n}").exists():
        n += 1
    return run_dir.with_name(f"{run_dir.name}-{n}")


def check_fresh(run_dir: Path) -> None:
    """Refuse to start a new run in a directory that holds a run's checkpoints or metrics
    (finished or not). A directory where a run failed before its first epoch may be reused."""
    from .interrupt import resume_command

    run_dir = Path(run_dir).expanduser().absolute()
    found = run_outputs(run_dir)
    if not found:
        return
    resume = f"continue it with `{resume_command(run_dir)}`, or " if "last.pt" in found else ""
    raise CnnbenchError(
        f"{run_dir} already holds a run ({', '.join(found)}) and a new run never writes over "
        f"one: {resume}start the new run in another directory, e.g. "
        f"hydra.run.dir={quote(str(_free_dir(run_dir)))} (or delete {run_dir} first)"
    )


@dataclass
class RunLock:
    """An exclusive flock() on a run (or sweep) directory's lock file, held by the process
    that writes the directory. The OS releases it when the process ends, however it ends,
    so a lock left by a killed process never blocks a later run."""

    path: Path
    fd: int | None = None
    created: bool = False  # the directory did not exist before the lock

    def stamp(self) -> None:
        """Write this process's id into the lock file (named when another is refused)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Give the lock up; a directory this lock created and nothing wrote is removed."""
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        run_dir = self.path.parent.parent
        with suppress(OSError):
            unused = os.listdir(run_dir) == [LOCK_FILE.parent.name] and os.listdir(
                self.path.parent
            ) == [LOCK_FILE.name]
            if self.created and unused:
                self.path.unlink()
                self.path.parent.rmdir()
                run_dir.rmdir()


def lock_dir(directory: Path, lock_file: Path = LOCK_FILE, elsewhere: bool = True) -> RunLock:
    """Lock `directory` (created if missing) for this process, or fail with one message
    naming the process that holds it (and, with `elsewhere`, another directory to use)."""
    directory = Path(directory).expanduser().absolute()
    path = directory / lock_file
    lock = RunLock(path, created=not directory.exists())
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return lock
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CnnbenchError(
            f"cannot create {directory}: {err.strerror or err}; choose another directory "
            "(hydra.run.dir=PATH)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        other = quote(str(_free_dir(directory)))
        other = f", or use another directory, e.g. hydra.run.dir={other}" if elsewhere else ""
        raise CnnbenchError(
            f"{directory} is in use by another cnnbench process (pid {holder}) that writes "
            f"there; wait for it to end (or stop it){other}"
        ) from None
    except OSError:  # a file system without locks (some network mounts): go on unlocked
        pass
    return RunLock(path, fd, lock.created)


def claim_run_dir(run_dir: Path, fresh: bool = True) -> RunLock:
    """Make `run_dir` this process's before Hydra writes into it: writable, locked against
    other cnnbench processes and, for a new run (`fresh`), not holding an earlier run."""
    check_writable(run_dir)
    if fresh and not (Path(run_dir) / LOCK_FILE).exists():  # refused: no lock file left
        check_fresh(run_dir)
    lock = lock_dir(run_dir, elsewhere=fresh)
    try:
        if fresh:  # again under the lock: a run that just ended in there counts
            check_fresh(run_dir)
    except BaseException:
        lock.release()
        raise
    lock.stamp()
    return lock


def claim_sweep_dir(sweep_dir: Path) -> RunLock:
    """A sweep's directory: refused when it holds runs of an earlier sweep, then locked."""
    sweep_dir = Path(sweep_dir).expanduser().absolute()
    check_writable(sweep_dir)
    lock = lock_dir(sweep_dir, Path(".sweep.lock"))
    earlier = sorted(
        str(run.relative_to(sweep_dir)) for run in find_runs(sweep_dir) if run_outputs(run)
    )
    if earlier:
        lock.release()
        raise CnnbenchError(
            f"hydra.sweep.dir={sweep_dir} already holds {len(earlier)} run(s) of an earlier "
            f"sweep ({', '.join(earlier[:5])}{', ...' if len(earlier) > 5 else ''}) and a "
            "sweep never writes over them: choose another directory, e.g. "
            f"hydra.sweep.dir={quote(str(_free_dir(sweep_dir)))} (or delete it first)"
        )
    lock.stamp()
    return lock


def _last_pt_stamp(run_dir: Path) -> tuple[int, int] | None:
    try:
        st = (Path(run_dir) / "last.pt").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@dataclass(frozen=True)
class SavedConfig:
    """A resumed run's saved config files, kept before Hydra rewrites them."""

    run_dir: Path
    files: dict[Path, bytes]
    last: tuple[int, int] | None  # last.pt's identity when they were kept


def _write_yaml(path: Path, data: Any) -> None:
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def record_session(run_dir: Path, overrides: Sequence[str]) -> None:
    """Keep every session's overrides: `.hydra/overrides_history.yaml` lists them (the run's
    first, then each resume's), and after a resume `.hydra/overrides.yaml`, which Hydra
    rewrites with the resume's overrides, holds the run's own again: all sessions'
    overrides, later values winning, without `resume=`."""
    import yaml

    hydra_dir = Path(run_dir) / SAVED_CONFIG.parent
    path = hydra_dir / HISTORY
    history = (yaml.safe_load(path.read_text()) if path.is_file() else None) or []
    history.append(list(overrides))
    _write_yaml(path, history)
    merged: dict[str, str] = {}
    for session in history:
        for item in session:
            key = str(item).split("=", 1)[0].lstrip("+~")
            merged.pop(key, None)  # a later value moves to the end
            merged[key] = str(item)
    merged.pop("resume", None)
    if list(merged.values()) != list(overrides):
        _write_yaml(hydra_dir / OVERRIDES, list(merged.values()))


def remember_saved_config(run_dir: Path) -> SavedConfig:
    """Keep `run_dir`'s saved config (before Hydra rewrites it) for `saved_config_guard`;
    a run from before overrides_history.yaml gets one, from its overrides.yaml."""
    import yaml

    hydra_dir = Path(run_dir) / SAVED_CONFIG.parent
    if (hydra_dir / OVERRIDES).is_file() and not (hydra_dir / HISTORY).is_file():
        _write_yaml(
            hydra_dir / HISTORY, [yaml.safe_load((hydra_dir / OVERRIDES).read_text()) or []]
        )
    files = {p: p.read_bytes() for p in hydra_dir.glob("*.yaml")}
    return SavedConfig(Path(run_dir), files, _last_pt_stamp(run_dir))


@contextmanager
def saved_config_guard(saved: SavedConfig | None) -> Iterator[None]:
    """A resume re-enters the run dir, and Hydra rewrites its .hydra/*.yaml with the new
    overrides before the run starts. If the resume then fails (another model, another
    batch_size mid-epoch, out of memory) before it saved last.pt, the run's own config is put
    back, so a plain `resume=RUN_DIR` still works afterwards."""
    try:
        yield
    except BaseException:
        if saved is not None and _last_pt_stamp(saved.run_dir) == saved.last:
            from .checkpoint import atomic_write

            for path, data in saved.files.items():
                atomic_write(path, lambda f, data=data: f.write(data))
        raise


def config_hash(run_dir: Path) -> str:
    """sha256 of a run's saved config (`.hydra/config.yaml`), stable across resumes.

    The config is hashed as canonical JSON (keys sorted, interpolations as written) without
    `resume`, which a resume rewrites: the same keys and values give the same hash.
    """
    data = to_plain(saved_config(run_dir))
    for key in IGNORED:
        data.pop(key, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

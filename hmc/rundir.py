"""The run directory: resolved config, NetCDF draws, JSON-lines logs, summary, checkpoint.

Layout (``../shared/DESIGN.md``, "Running")::

    RUN_DIR/
      config.yaml        the resolved configuration (every default filled in)
      draws.nc           ArviZ layout: groups posterior, sample_stats, warmup_sample_stats
      guard.jsonl        one guard event per line
      log.jsonl          one record per chunk (and one per start, resume, stop, end), appended
                         line by line; after a resume, the chunks past the checkpoint that
                         the interrupted process logged stay, before the "resume" record
      summary.json       the summary table as data
      checkpoint/        state.npz (sampler state + counters) and one npz per chunk of output
      plots/             PNG figures (:mod:`hmc.plots`)

Every file is written atomically: a temporary file in the same folder, flushed
and fsync'ed, then ``os.replace`` (and the folder fsync'ed), so a ``kill -9`` at
any moment leaves either the old or the new version of each file, never half
of one. The checkpoint's ``state.npz`` names how many chunk files belong to it;
chunk files are written before it, so a kill between the two leaves a chunk
file that the next run rewrites with identical content.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import yaml

from hmc.checkpoint import OPTIONAL_STATS, STAT_NAMES, STAT_PREFIX, WARMUP_STATS, Checkpoint

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.npz"
PREVIOUS_STATE_FILE = "state.prev.npz"  # the generation before, kept until the new one verifies
NEXT_STATE_FILE = "state.next.npz"  # the new generation, written and verified before it replaces state.npz
GENERATIONS = (STATE_FILE, NEXT_STATE_FILE, PREVIOUS_STATE_FILE)  # tried in this order on resume


class StorageError(OSError):
    """A write to the run directory failed: ``path`` is the file or folder. Every file is
    replaced atomically, so the one before is intact."""

    def __init__(self, path: str, err: OSError, why: str):
        self.path = path
        super().__init__(err.errno, f"{path}: {err.strerror or err} ({why})")


class DiskFull(StorageError):
    """A write failed for lack of space (``ENOSPC``) or quota (``EDQUOT``)."""

    def __init__(self, path: str, err: OSError):
        super().__init__(path, err, "no space left or quota reached")


class Unwritable(StorageError):
    """The run directory cannot be written: read-only, not a directory, or removed."""

    def __init__(self, path: str, err: OSError):
        super().__init__(path, err, "the run directory cannot be written: read-only, not a directory, or removed")


def _storage_error(path: str, err: BaseException) -> BaseException:
    """The :class:`StorageError` an ``OSError`` of a write stands for (else ``err`` itself)."""
    if isinstance(err, StorageError) or not isinstance(err, OSError):
        return err
    return DiskFull(path, err) if _out_of_space(err) else Unwritable(path, err)


def _out_of_space(err: BaseException) -> bool:
    import errno

    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


class DamagedFile(ValueError):
    """A file of the run directory that does not read back as written: ``path``, and
    ``what`` is wrong (truncated, checksum mismatch, unreadable)."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        super().__init__(f"{path}: {what}")


class CheckpointMismatch(RuntimeError):
    """The run directory's checkpoint was written by a different config, version,
    precision or device layout; ``reasons`` says what differs."""

    def __init__(self, path: str, reasons: list[str]):
        self.reasons = reasons
        super().__init__(
            f"the checkpoint in {path} cannot be resumed by this run:\n  " + "\n  ".join(reasons)
            + "\nUse a new output directory (--out DIR), or restore the settings above."
        )


class CheckpointDamaged(CheckpointMismatch):
    """Every generation of the checkpoint is damaged (``damaged``: the :class:`DamagedFile`
    errors, newest first)."""

    def __init__(self, path: str, damaged: list):
        self.damaged = damaged
        RuntimeError.__init__(
            self, f"the checkpoint in {path} cannot be read back:\n  " + "\n  ".join(str(d) for d in damaged)
            + "\nNo generation of it verifies, so the run cannot continue from it. Restore the files from a copy, "
            "or sample again into a new directory (--out DIR).")
        self.reasons = [str(d) for d in damaged]


# -- atomic files ---------------------------------------------------------------

# With several processes (jax.distributed) only process 0 writes the run directory;
# the others compute the same host-side results and write nothing.
_WRITER = True


def set_writer(writes: bool) -> None:
    global _WRITER
    _WRITER = bool(writes)


def is_writer() -> bool:
    return _WRITER


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # not every file system allows it
        fd = os.open(folder, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = True) -> None:
    """Create or replace ``path`` atomically with what ``write(file)`` writes."""
    if not _WRITER:
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    except OSError as err:
        raise _storage_error(path, err) from None
    os.close(fd)

    def fill(tmp: str) -> None:
        with open(tmp, "wb" if binary else "w") as fh:
            write(fh)

    _replace_atomically(path, tmp, fill)


def _replace_atomically(path: str, tmp: str, fill: Callable[[str], None]) -> None:
    """``fill(tmp)`` writes the temporary file; then fsync, ``os.replace`` onto ``path``
    and fsync the folder. On any failure the temporary file is removed."""
    try:
        fill(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files are as readable as any other
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        mapped = _storage_error(path, err)
        if mapped is not err:
            raise mapped from None
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text), binary=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(_jsonable(dict(r))) + "\n" for r in records))


def append_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    """Append whole lines to ``path`` and fsync: the cost of a record does not grow with
    the file, and a kill at any moment leaves at most a partial last line, which
    :func:`read_jsonl` skips and :func:`repair_jsonl` removes before the next append."""
    if not _WRITER:
        return
    text = "".join(json.dumps(_jsonable(dict(r))) + "\n" for r in records)
    try:
        with open(path, "a") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:  # a partial line is dropped by the next repair_jsonl
        raise _storage_error(path, err) from None


def repair_jsonl(path: str) -> None:
    """Cut ``path`` back to its last whole line (a write killed half-way)."""
    if not _WRITER or not os.path.exists(path):
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of ``path``; a last line without its newline (a write killed
    half-way) is not a record yet."""
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as fh:
        text = fh.read()
    lines = text.split("\n")
    if lines and lines[-1].strip():  # unterminated: being written, or cut by a kill
        lines = lines[:-1]
    records, damaged = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # a damaged line is no record; the others still are
            damaged += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            damaged += 1
    if damaged:
        import logging

        logging.getLogger("hmc").warning("%s: %d damaged line(s) skipped", path, damaged)
    return records


def _digest(payload: Mapping[str, np.ndarray]) -> str:
    """sha256 over every member's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(payload):
        if key == "sha256":
            continue
        x = np.ascontiguousarray(payload[key])
        h.update(f"{key}|{x.dtype.str}|{x.shape}|".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def _savez(path: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
    """npz with arbitrary names (leaf names may contain '/'): arrays as a0, a1, ...
    plus their names, an optional JSON ``meta`` as string arrays, and the ``sha256`` of
    all of it, which :func:`_loadz` checks."""
    names = list(arrays)
    payload = {f"a{i}": np.asarray(arrays[n]) for i, n in enumerate(names)}
    payload["names"] = np.array(json.dumps(names))
    if meta is not None:
        payload["meta"] = np.array(json.dumps(_jsonable(dict(meta))))
    payload["sha256"] = np.array(_digest(payload))
    atomic_write(path, lambda fh: np.savez(fh, **payload))


def _loadz(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """:func:`_savez`'s file back, checked: :class:`DamagedFile` names what is wrong (a file
    of an earlier version without a checksum is read as it is)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            payload = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DamagedFile(path, "missing") from None
    except (zipfile.BadZipFile, EOFError, zlib_error()) as err:
        raise DamagedFile(path, f"truncated or not a complete npz file ({err})") from None
    except (OSError, ValueError, KeyError) as err:
        raise DamagedFile(path, f"unreadable ({type(err).__name__}: {err})") from None
    if "sha256" in payload and str(payload["sha256"]) != _digest(payload):
        raise DamagedFile(path, "checksum mismatch: its content changed after it was written")
    try:
        names = json.loads(str(payload["names"]))
        arrays = {n: payload[f"a{i}"] for i, n in enumerate(names)}
        meta = json.loads(str(payload["meta"])) if "meta" in payload else None
    except (KeyError, ValueError) as err:
        raise DamagedFile(path, f"unreadable ({type(err).__name__}: {err})") from None
    return arrays, meta


def zlib_error() -> type:
    import zlib

    return zlib.error


# -- provenance ------------------------------------------------------------------


def git_commit() -> str | None:
    """The commit of the package's source tree when it is a git checkout (``+dirty`` if modified)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import jax
    import jaxlib
    import numpyro

    import hmc

    return {"guarded_hmc": hmc.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "numpyro": numpyro.__version__}


def device_layout(devices: Any = "auto", num_chains: int = 1, mesh: Any = None) -> dict[str, Any]:
    """The devices this process samples on (``run.devices`` and ``run.mesh`` resolved for
    ``num_chains``); with a lattice mesh, also the mesh."""
    import jax

    from hmc.devices import resolve_layout

    layout = resolve_layout(mesh, devices, num_chains)
    used = layout.devices
    return {"platform": used[0].platform, "device_kind": used[0].device_kind, "num_devices": len(used),
            "process_count": jax.process_count(),
            **({"mesh": {"chain": layout.chain, "lattice": layout.lattice}} if layout.lattice > 1 else {})}


# Keys added since the first checkpoints were written, with the value that an older
# checkpoint (which lacks them) ran with.
_ADDED_KEYS = {"sampler.kernel": "hmc", "sampler.persistence": None, "sampler.max_num_steps": 1000,
               "sampler.timescales": None, "sampler.tempering": None, "sampler.max_tree_depth": None,
               "model.kind": "potential", "model.init_strategy": "uniform", "run.mesh": None}

# Keys that may change between a run and its resumption without changing a single draw.
_RESUMABLE_CHANGES = ("output.dir", "run.checkpoint_every", "run.strict")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and key != "params":
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_hash(config_dict: Mapping[str, Any]) -> str:
    """A hash of everything in the config that changes the draws."""
    flat = {k: v for k, v in _flatten(config_dict).items() if k not in _RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(_jsonable(flat), sort_keys=True).encode()).hexdigest()[:16]


def identity(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it for bit-identical draws."""
    import jax

    return {
        "config": _jsonable(dict(config_dict)),
        "config_hash": config_hash(config_dict),
        "versions": versions(),
        "precision": config_dict.get("run", {}).get("precision"),
        "x64": bool(jax.config.read("jax_enable_x64")),
        "devices": device_layout(config_dict.get("run", {}).get("devices", "auto"),
                                 config_dict.get("sampler", {}).get("num_chains", 1),
                                 config_dict.get("run", {}).get("mesh")),
    }


def mismatches(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`identity` records."""
    reasons = []
    a = {k: v for k, v in _flatten(saved["config"]).items() if k not in _RESUMABLE_CHANGES}
    b = {k: v for k, v in _flatten(current["config"]).items() if k not in _RESUMABLE_CHANGES}
    for key in sorted(set(a) | set(b)):
        if a.get(key, _ADDED_KEYS.get(key, "<absent>")) != b.get(key, _ADDED_KEYS.get(key, "<absent>")):
            reasons.append(f"config {key}: checkpoint has {a.get(key, '<absent>')!r}, this run {b.get(key, '<absent>')!r}")
    for package, version in saved["versions"].items():
        if current["versions"].get(package) != version:
            reasons.append(f"{package} version: checkpoint written by {version}, this is {current['versions'].get(package)}")
    if saved.get("x64") != current.get("x64"):
        reasons.append(f"jax_enable_x64: checkpoint {saved.get('x64')}, this run {current.get('x64')}")
    for key in ("platform", "device_kind", "num_devices", "process_count"):
        if saved["devices"].get(key) != current["devices"].get(key):
            reasons.append(f"device layout {key}: checkpoint {saved['devices'].get(key)!r}, "
                           f"this run {current['devices'].get(key)!r}")
    return reasons


# -- the directory -----------------------------------------------------------------


class RunDirectoryBusy(RuntimeError):
    """Another process is running in this run directory."""


def check_writable(path: str) -> None:
    """Create the run directory if needed and prove a file can be written and replaced in
    it (:class:`Unwritable` or :class:`DiskFull` naming it otherwise)."""
    write_text(os.path.join(path, ".writable"), "ok\n")
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(path, ".writable"))


@contextlib.contextmanager
def exclusive(path: str) -> Any:
    """Hold ``path/.lock`` (an flock, released by the kernel even after ``kill -9``)."""
    import fcntl

    if not _WRITER:
        yield
        return

    fh = open(os.path.join(path, ".lock"), "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            raise RunDirectoryBusy(f"{path}: another hmc run (pid {owner}) is using this run directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


class RunDirectory:
    """Reads and writes the files of one run directory."""

    def __init__(self, path: str):
        self.path = path
        self._written_chunks: dict[str, int] = {"warmup": 0, "sample": 0}

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoint_dir(self) -> str:
        return self.file(CHECKPOINT_DIR)

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the temporary files a killed process left behind (never a finished file)."""
        removed: list[str] = []
        if not _WRITER:
            return removed
        for folder in (self.path, self.checkpoint_dir, os.path.join(self.path, "plots")):
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                if name.startswith(".tmp-"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(folder, name))
                        removed.append(name)
        return removed

    def has_checkpoint(self) -> bool:
        return any(os.path.exists(os.path.join(self.checkpoint_dir, name)) for name in GENERATIONS)

    def has_draws(self) -> bool:
        return os.path.exists(self.file("draws.nc"))

    # checkpoint ---------------------------------------------------------------
    def save_checkpoint(self, checkpoint: Checkpoint, ident: Mapping[str, Any]) -> None:
        """Chunk files not yet on disk, then the state file that makes them part of the checkpoint."""
        if not _WRITER:
            return
        folder = self.checkpoint_dir
        os.makedirs(folder, exist_ok=True)
        self._verify_one_chunk(folder, checkpoint)
        for phase, chunks in (("warmup", checkpoint.warmup_chunks), ("sample", checkpoint.sample_chunks)):
            for i in range(self._written_chunks[phase], len(chunks)):
                _savez(os.path.join(folder, f"{phase}-{i:05d}.npz"), chunks[i])
            self._written_chunks[phase] = len(chunks)
        meta = dict(checkpoint.meta, identity=dict(ident),
                    num_warmup_chunks=len(checkpoint.warmup_chunks), num_sample_chunks=len(checkpoint.sample_chunks))
        self._replace_state(folder, checkpoint.arrays, meta)

    def _verify_one_chunk(self, folder: str, checkpoint: Checkpoint) -> None:
        """Read back one chunk file already on disk, in rotation (one per save, so the cost
        does not grow with the run), and rewrite it from memory if it is damaged: a chunk
        the run still holds is never lost to a bad block."""
        written = [(phase, i) for phase, chunks in (("warmup", checkpoint.warmup_chunks),
                                                    ("sample", checkpoint.sample_chunks))
                   for i in range(min(self._written_chunks[phase], len(chunks)))]
        if not written:
            return
        self._cursor = getattr(self, "_cursor", -1) + 1
        phase, i = written[self._cursor % len(written)]
        path = os.path.join(folder, f"{phase}-{i:05d}.npz")
        try:
            _loadz(path)
        except DamagedFile as err:
            import logging

            logging.getLogger("hmc").warning("%s; rewritten from the draws in memory", err)
            _savez(path, (checkpoint.warmup_chunks if phase == "warmup" else checkpoint.sample_chunks)[i])

    def _replace_state(self, folder: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Two generations: the new state is written beside the current one and read back;
        only a verified new state becomes ``state.npz``, the one it replaces ``state.prev.npz``.
        A kill or a damaged write at any step leaves a generation that verifies."""
        state, following = os.path.join(folder, STATE_FILE), os.path.join(folder, NEXT_STATE_FILE)
        _savez(following, arrays, meta)
        _loadz(following)  # DamagedFile if what reached the disk is not what was written
        if os.path.exists(state):
            os.replace(state, os.path.join(folder, PREVIOUS_STATE_FILE))
        os.replace(following, state)
        _fsync_dir(folder)

    def prune_checkpoint(self) -> None:
        """Once ``draws.nc`` holds the draws, drop the chunk files (the state file stays,
        marked complete, so that rerunning the command reports the finished run)."""
        if not _WRITER:
            return
        folder = self.checkpoint_dir
        arrays, meta = _loadz(os.path.join(folder, STATE_FILE))
        if not meta.get("complete"):
            return
        meta.update(num_warmup_chunks=0, num_sample_chunks=0, draws_in="draws.nc")
        _savez(os.path.join(folder, STATE_FILE), arrays, meta)
        for name in os.listdir(folder):
            if (name.endswith(".npz") and name.split("-")[0] in ("warmup", "sample")) or name in GENERATIONS[1:]:
                os.unlink(os.path.join(folder, name))  # chunks now in draws.nc; older generations point at them
        _fsync_dir(folder)

    def load_checkpoint(self) -> tuple[Checkpoint, dict[str, Any]]:
        """The newest generation of the checkpoint that verifies (its state and every chunk
        file it names), and the identity it was written under. ``self.damaged`` lists what
        was skipped (:class:`DamagedFile`), ``self.loaded_from`` the state file used;
        :class:`CheckpointDamaged` when no generation verifies."""
        self.damaged: list[DamagedFile] = []
        for name in GENERATIONS:
            path = os.path.join(self.checkpoint_dir, name)
            if not os.path.exists(path):
                continue
            try:
                found = self._load_generation(path)
            except DamagedFile as err:
                self.damaged.append(err)
                continue
            self.loaded_from = name
            return found
        raise CheckpointDamaged(self.path, self.damaged or [DamagedFile(self.checkpoint_dir, "no state file")])

    def _load_generation(self, state: str) -> tuple[Checkpoint, dict[str, Any]]:
        folder = self.checkpoint_dir
        arrays, meta = _loadz(state)
        if meta is None or "identity" not in meta:
            raise DamagedFile(state, "unreadable: it holds no checkpoint record")
        chunks = {}
        for phase, count in (("warmup", meta["num_warmup_chunks"]), ("sample", meta["num_sample_chunks"])):
            chunks[phase] = [_loadz(os.path.join(folder, f"{phase}-{i:05d}.npz"))[0] for i in range(count)]
            self._written_chunks[phase] = count
        ident = meta.pop("identity")
        meta.pop("log", None)  # checkpoints of earlier versions carried the log
        meta.pop("num_warmup_chunks")
        meta.pop("num_sample_chunks")
        if meta.get("draws_in") and not self.has_draws():
            raise CheckpointMismatch(self.path, [
                "the run finished and its draws were moved into draws.nc, which is missing now; "
                "sample again into a new directory"])
        return Checkpoint(meta=meta, arrays=arrays, warmup_chunks=chunks["warmup"],
                          sample_chunks=chunks["sample"]), ident

    def load(self) -> dict[str, Any]:
        """What a run has produced, finished (``draws.nc``) or in progress (the checkpoint):
        ``draws``, ``stats``, ``warmup_stats``, ``exact`` (``{}`` in progress: the model knows it),
        ``observables`` (``None`` in progress), ``events``, ``status`` and ``config`` (a dict)."""
        if self.has_draws():
            data = read_draws(self.file("draws.nc"))
            data["observables"] = [k for k, kind in data.pop("kinds").items() if kind == "observable"]
            data["events"] = read_jsonl(self.file("guard.jsonl"))
            log = read_jsonl(self.file("log.jsonl"))
            data["status"] = "halted" if any(r.get("event") == "end" and r.get("halted") for r in log) else "complete"
            with open(self.file("config.yaml")) as fh:
                data["config"] = yaml.safe_load(fh)
            return data
        if not self.has_checkpoint():
            raise FileNotFoundError(f"{self.path}: no draws.nc and no checkpoint: not a run directory, "
                                    "or nothing ran yet")
        data = self.checkpoint_draws()
        meta, config = data.pop("meta"), data.pop("identity")["config"]
        data.update(exact={}, observables=None, events=meta["events"], config=config,
                    status=f"in progress: {meta['warmup_done']}/{config['sampler']['num_warmup']} warmup iterations, "
                           f"{meta['drawn']}/{config['sampler']['num_samples']} draws")
        return data

    def checkpoint_draws(self) -> dict[str, Any]:
        """Draws and statistics stored in the checkpoint so far (a run in progress)."""
        checkpoint, ident = self.load_checkpoint()

        def stack(chunks: list[dict]) -> dict[str, np.ndarray]:
            if not chunks:
                return {}
            return {k: np.swapaxes(np.concatenate([c[k] for c in chunks]), 0, 1) for k in chunks[0]}

        sampled = stack(checkpoint.sample_chunks)
        return dict(
            draws={k: v for k, v in sampled.items() if not k.startswith(STAT_PREFIX)},
            stats={k[len(STAT_PREFIX):]: v for k, v in sampled.items() if k.startswith(STAT_PREFIX)},
            warmup_stats=stack(checkpoint.warmup_chunks),
            meta=checkpoint.meta,
            identity=ident,
        )


# -- NetCDF (ArviZ layout) --------------------------------------------------------------


def _var_name(name: str) -> str:
    """NetCDF names cannot hold '/', which separates pytree leaf names."""
    return name.replace("/", ".")


def _dataset(values: Mapping[str, np.ndarray], attrs: Mapping[str, Any], var_attrs: Mapping[str, dict] | None = None):
    import xarray as xr

    data_vars = {}
    for name, x in values.items():
        x = np.asarray(x)
        var = _var_name(name)
        extra = dict((var_attrs or {}).get(name, {}))
        if np.iscomplexobj(x):  # NetCDF has no complex type: real and imaginary parts on a last axis
            x = np.stack([x.real, x.imag], axis=-1)
            extra["hmc_complex"] = 1
        dims = ["chain", "draw"] + [f"{var}_dim_{i}" for i in range(x.ndim - 2)]
        coords = {d: np.arange(n) for d, n in zip(dims[2:], x.shape[2:])}
        if var != name:
            extra["hmc_name"] = name
        data_vars[var] = xr.DataArray(x, dims=dims, coords=coords, attrs=extra)
    any_value = next(iter(values.values()), None)
    chains, draws = (np.shape(any_value)[:2] if any_value is not None else (0, 0))
    return xr.Dataset(data_vars, coords={"chain": np.arange(chains), "draw": np.arange(draws)}, attrs=dict(attrs))


def _netcdf_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """NetCDF attributes are strings, numbers or 1-d arrays of them."""
    out = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        elif isinstance(value, (dict, list, tuple)):
            value = json.dumps(_jsonable(value))
        out[key] = value
    return out


def write_draws(
    path: str,
    draws: Mapping[str, np.ndarray],
    stats: Mapping[str, np.ndarray],
    warmup_stats: Mapping[str, np.ndarray],
    exact: Mapping[str, Any],
    attrs: Mapping[str, Any],
    observables: Iterable[str] = (),
) -> None:
    """``draws.nc``: ``posterior`` (observables and recorded leaves; an observable's
    exact value, when known, is its ``exact`` attribute), ``sample_stats`` and
    ``warmup_sample_stats``, each with the provenance ``attrs``."""
    import xarray as xr

    if not _WRITER:
        return
    group_attrs = _netcdf_attrs(dict(attrs, created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                                     inference_library="guarded-hmc"))
    var_attrs: dict[str, dict] = {k: {"hmc_kind": "observable" if k in observables else "state"} for k in draws}
    for k, v in exact.items():
        if k in draws:
            var_attrs[k]["exact"] = np.asarray(v, np.float64)
    groups = {
        "posterior": _dataset(draws, group_attrs, var_attrs),
        "sample_stats": _dataset({k: stats[k] for k in (*STAT_NAMES, *OPTIONAL_STATS) if k in stats}, group_attrs),
    }
    if warmup_stats:
        groups["warmup_sample_stats"] = _dataset({k: warmup_stats[k] for k in WARMUP_STATS if k in warmup_stats},
                                                 group_attrs)
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = group_attrs
    # to_netcdf needs a path (h5netcdf writes through h5py): write a temporary file, then replace
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".nc")
    os.close(fd)
    _replace_atomically(path, tmp, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"))
    write_text(path + CHECKSUM_SUFFIX, f"{_file_digest(path)}  {os.path.basename(path)}\n")


#: the manifest beside ``draws.nc``: its sha256, written after it (``sha256sum -c`` reads it)
CHECKSUM_SUFFIX = ".sha256"


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_digest(path: str) -> None:
    """:class:`DamagedFile` if ``path`` has a manifest (an older run's draws.nc has none)
    and no longer matches it."""
    manifest = path + CHECKSUM_SUFFIX
    if not os.path.exists(manifest):
        return
    with open(manifest, errors="replace") as fh:
        expected = fh.read().split()[:1]
    if expected and expected[0] != _file_digest(path):
        raise DamagedFile(path, f"checksum mismatch against {os.path.basename(manifest)}: its content changed "
                                "after it was written")


def _complex_back(variable: Any) -> np.ndarray:
    """A variable's values, complex again if it was stored as real and imaginary parts."""
    values = variable.values
    if int(variable.attrs.get("hmc_complex", 0)):
        return values[..., 0] + 1j * values[..., 1]
    return values


def read_draws(path: str) -> dict[str, Any]:
    """``draws.nc`` back as numpy: ``draws``, ``stats``, ``warmup_stats``, ``exact`` and ``attrs``;
    :class:`DamagedFile` when it does not read."""
    try:
        _check_digest(path)
        return _read_draws(path)
    except DamagedFile:
        raise
    except FileNotFoundError:
        raise DamagedFile(path, "missing") from None
    except (OSError, ValueError, KeyError) as err:
        raise DamagedFile(path, f"unreadable, truncated or not a NetCDF file ({type(err).__name__}: {err})") from None


def _read_draws(path: str) -> dict[str, Any]:
    import xarray as xr

    with xr.open_datatree(path, engine="h5netcdf") as tree:

        def group(name: str) -> dict[str, np.ndarray]:
            if name not in tree.children:
                return {}
            ds = tree[name].to_dataset()
            return {str(ds[v].attrs.get("hmc_name", v)): _complex_back(ds[v]) for v in ds.data_vars}

        posterior = tree["posterior"].to_dataset()
        exact = {str(posterior[v].attrs.get("hmc_name", v)): np.asarray(posterior[v].attrs["exact"])
                 for v in posterior.data_vars if "exact" in posterior[v].attrs}
        exact = {k: (v.item() if v.ndim == 0 else v) for k, v in exact.items()}
        kinds = {str(posterior[v].attrs.get("hmc_name", v)): str(posterior[v].attrs.get("hmc_kind", "observable"))
                 for v in posterior.data_vars}
        return dict(draws=group("posterior"), stats=group("sample_stats"), warmup_stats=group("warmup_sample_stats"),
                    exact=exact, attrs=dict(tree.attrs), kinds=kinds)


def dump_config(config_dict: Mapping[str, Any]) -> str:
    return yaml.safe_dump(_jsonable(dict(config_dict)), sort_keys=False, default_flow_style=None)


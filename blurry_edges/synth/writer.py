"""Streaming, crash-safe writing of a dataset folder (the data of paper Sec. 4.2, streamed, never held whole).

* Arrays are written scene by scene into ``.npy`` files whose header already states the final shape
  (``NpyWriter``), so nothing is held whole in memory and plain file writes keep the resident set
  small (no memory map of the output).
* Everything goes into ``<data_path>.tmp-XXXX`` next to the destination; ``manifest.json`` is
  written last and the folder is then renamed into place (``StagingDir``). An interrupted run leaves
  at most a ``.tmp-`` folder, never a folder that looks complete.
* Each temporary folder records its owner (host and process id, ``.owner.json``). A run that was
  killed outright (``kill -9``, a crash of the machine) cannot remove its own; the next run of the
  same set removes every temporary folder whose owner is gone, and says so.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..data import FORMAT_NAME, MANIFEST_NAME   # one definition of the format, shared with the readers


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_entry(shape, dtype) -> dict:
    return {"shape": [int(s) for s in shape], "dtype": np.dtype(dtype).name}


class NpyWriter:
    """A ``.npy`` file of known shape and dtype, filled one leading-axis item at a time."""

    def __init__(self, path: str | Path, shape, dtype):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.item_shape = self.shape[1:]
        self.item_bytes = int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._f, header)
        self.offset = self._f.tell()
        self._f.truncate(self.offset + self.item_bytes * self.shape[0])

    def write(self, index: int, item) -> None:
        item = np.asarray(item)
        if item.shape != self.item_shape or item.dtype != self.dtype:
            raise ValueError(f"{self.path.name}[{index}]: got {item.shape} {item.dtype}, "
                             f"expected {self.item_shape} {self.dtype}")
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"{self.path.name}: index {index} out of range {self.shape[0]}")
        self._f.seek(self.offset + index * self.item_bytes)
        self._f.write(np.ascontiguousarray(item).tobytes())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NpyItemReader:
    """Reads single leading-axis items of a ``.npy`` file with plain reads (no memory map).

    Used to revisit a set while it is written: a memory map would count every page it touches in
    the process's resident memory, a plain read only holds the item asked for.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.item_count = int(np.prod(self.shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(index)
        offset = self.offset + int(index) * self.item_count * self.dtype.itemsize
        return np.fromfile(self.path, dtype=self.dtype, count=self.item_count, offset=offset).reshape(self.shape[1:])


def check_destination(path: str | Path, overwrite: bool) -> None:
    """Refuse (before any work) to replace an existing, non-empty dataset folder without ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        what = "a dataset (it has a manifest)" if (path / MANIFEST_NAME).is_file() else "files"
        raise FileExistsError(f"{path} already holds {what}; pass --overwrite to replace it, "
                              f"or choose another --data_path")


def human_bytes(n: float) -> str:
    """``1234567`` → ``"1.23 MB"`` (decimal units, never "0.00 GB" for a small set)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return f"{n:.2f} TB"


def check_free_space(path: str | Path, nbytes: int, margin: float = 1.05) -> None:
    """Fail early when the file system of ``path`` cannot hold ``nbytes`` more.

    File systems that report no size at all (total 0: some network, FUSE and in-memory mounts)
    cannot be checked; the check is then skipped rather than failing on a meaningless "0 free".
    """
    parent = Path(path).resolve().parent
    while not parent.exists():
        parent = parent.parent
    usage = shutil.disk_usage(parent)
    if usage.total <= 0:
        return
    if usage.free < nbytes * margin:
        raise OSError(f"not enough disk space at {parent}: the data set needs {human_bytes(nbytes)}, "
                      f"{human_bytes(usage.free)} are free; free some space or choose another --data_path")


OWNER_FILE = ".owner.json"


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, belongs to someone else
        return True
    return True


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def remove_stale_staging(final: str | Path, log: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Remove the temporary folders (``<name>.tmp-*``, ``<name>.old-*``) that interrupted runs of
    the set ``final`` left behind; returns those removed.

    A folder is stale when its recorded owner process no longer runs on this host, or when it
    records no owner (made by a run that predates the record). A folder whose owner still runs, or
    runs on another host (a shared file system: it cannot be told), is left and mentioned.
    """
    final = Path(final)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    removed: list[Path] = []
    if not final.parent.is_dir():
        return removed
    for cand in sorted(final.parent.glob(final.name + ".tmp-*")) + sorted(final.parent.glob(final.name + ".old-*")):
        if not cand.is_dir():
            continue
        if ".old-" in cand.name[len(final.name):] and not (final / MANIFEST_NAME).is_file():
            log(f"note: {cand} holds the previous version of {final}, whose replacement was interrupted; "
                f"left in place — rename it back to {final.name} to use it")
            continue
        owner = None
        try:
            owner = json.loads((cand / OWNER_FILE).read_text())
        except (OSError, ValueError):
            pass
        if owner is not None:
            if owner.get("host") != socket.gethostname():
                log(f"note: {cand} belongs to a run on {owner.get('host')} (process {owner.get('pid')}); "
                    "left in place — remove it by hand if that run is over")
                continue
            if _alive(int(owner.get("pid", -1))):
                log(f"note: {cand} is being written by process {owner.get('pid')}; left in place")
                continue
        size = _folder_bytes(cand)
        shutil.rmtree(cand, ignore_errors=True)
        removed.append(cand)
        log(f"removed {cand} ({human_bytes(size)}), a temporary folder left by an interrupted run of this set")
    return removed


class StagingDir:
    """A temporary sibling folder that becomes ``final`` only when ``commit`` writes the manifest.

    Use as a context manager: an exception (or Ctrl-C) inside removes the temporary folder.
    Temporary folders that earlier, killed runs of the same set left behind are removed first
    (:func:`remove_stale_staging`).
    """

    def __init__(self, final: str | Path, overwrite: bool = False, log: Optional[Callable[[str], None]] = None):
        self.final = Path(final)
        self.overwrite = overwrite
        check_destination(self.final, overwrite)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.final, log)
        self.path = Path(tempfile.mkdtemp(prefix=self.final.name + ".tmp-", dir=self.final.parent))
        self.path.chmod(0o777 & ~_umask())   # mkdtemp makes it private; the data set is not
        (self.path / OWNER_FILE).write_text(json.dumps(_owner()))
        self.files: dict[str, dict] = {}
        self._writers: list[NpyWriter] = []
        self.committed = False

    def writer(self, relpath: str, shape, dtype) -> NpyWriter:
        w = NpyWriter(self.path / relpath, shape, dtype)
        self._writers.append(w)
        self.files[relpath] = file_entry(shape, dtype)
        return w

    def save(self, relpath: str, array: np.ndarray) -> None:
        """Write a whole (small) array at once."""
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.ascontiguousarray(array))
        self.files[relpath] = file_entry(array.shape, array.dtype)

    def close_writers(self) -> None:
        for w in self._writers:
            w.close()

    def commit(self, manifest: dict) -> Path:
        """Write ``manifest.json`` (with every file's shape and dtype) last, then move into place."""
        self.close_writers()
        (self.path / OWNER_FILE).unlink(missing_ok=True)
        manifest = dict(manifest)
        manifest["files"] = dict(sorted(self.files.items()))
        with open(self.path / MANIFEST_NAME, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if self.final.exists():
            check_destination(self.final, self.overwrite)
            if any(self.final.iterdir()):
                old = self.final.with_name(self.final.name + ".old-" + self.path.name.rsplit("-", 1)[-1])
                self.final.rename(old)
            else:
                self.final.rmdir()
        self.path.rename(self.final)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        self.close_writers()
        if not self.committed and self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or not self.committed:
            self.abort()
        return False

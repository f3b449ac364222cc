"""Atomic writes: a temporary sibling, then a rename, so no partial file or directory is ever seen;
ordinary modes. `atomic_path` for one file, `staged_dir` for a directory (a model, a zoo)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from automerge.errors import AutomergeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    return 0o666 & ~_umask()


def normal_modes(root: Path) -> None:
    """mkdtemp makes 0700 and mkstemp 0600: give a staged tree ordinary modes (umask respected)."""
    mask = _umask()
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, else deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def staged_dir(target: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty directory beside `target`; on success it becomes `target`, else it is deleted.

    Parents that did not exist are made, and removed again on failure. On success the tree gets
    ordinary modes, then is renamed onto `target`: an empty `target` is replaced; a non-empty one
    only with `replace` (moved aside first, put back if the rename fails, then deleted), else
    AutomergeError — callers check the target before any expensive work, this catches a race.
    """
    target = Path(target).expanduser()
    made = []
    d = target.parent
    while not d.exists():
        made.append(d)
        d = d.parent
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as e:
        raise AutomergeError(f"cannot write to {target.parent} ({e.strerror}); choose a writable output path") from e
    try:
        yield tmp
        normal_modes(tmp)
        _rename_onto(tmp, target, replace=replace)
    except BaseException:  # KeyboardInterrupt too: never leave a partial directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        for p in made:  # innermost first
            try:
                p.rmdir()
            except OSError:
                break
        raise


def _rename_onto(tmp: Path, target: Path, *, replace: bool) -> None:
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(tmp, target)
        return
    if not replace:
        raise AutomergeError(f"output directory {target} was filled by someone else while it was being written; "
                             "remove it or choose another path")
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    try:
        os.replace(target, trash / "old")  # target is gone for an instant, never half-written
        try:
            os.rename(tmp, target)
        except BaseException:
            os.replace(trash / "old", target)  # put the old one back
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)

"""Atomic writes: nothing a stage has written is ever left half-written or lost.

Outputs are written under a temporary name beside their destination and renamed into place. The
temporary names are created private (0600/0700) so no one reads a half-written file; once complete,
a file or directory gets the permissions the process's umask gives any new file, so on a shared
cluster the group can read results and models as with any other output.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux ≥ 4.7)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting and restoring it
    os.umask(mask)
    return mask


def _permit(path: Path, umask: int) -> None:
    """Give `path` the mode a plain `open`/`mkdir` would have: 0666 or 0777 (executables) less umask."""
    if path.is_symlink():
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    executable = path.is_dir() or mode & stat.S_IXUSR
    os.chmod(path, (0o777 if executable else 0o666) & ~umask)


def permit_tree(root: Path, umask: int | None = None) -> None:
    """Apply :func:`_permit` to `root` and everything below it (libraries may write private temp files)."""
    umask = current_umask() if umask is None else umask
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            _permit(Path(directory, name), umask)
    _permit(Path(root), umask)


def check_output_file(path: str | Path) -> Path:
    """Fail before any work is done if `path` cannot become an output file (checked up front, so a
    long generation is not lost to a typo in `--out`).

    Raises:
        IsADirectoryError: `path` is a directory.
        NotADirectoryError: a parent of `path` is a file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; an output file is expected here")
    _check_parents(path)
    return path


def check_output_dir(path: str | Path) -> Path:
    """Fail before any work is done if `path` cannot become an output directory.

    Raises:
        NotADirectoryError: `path` or one of its parents is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: is a file; an output directory is expected here")
    _check_parents(path)
    return path


def _check_parents(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{path}: its parent {parent} is a file, not a directory")
            return


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; rename it onto `path` only if the block succeeds."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            _permit(tmp_path, current_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds.

    An existing `path` (an earlier output, or the empty folder Snakemake makes for declared
    outputs) is replaced as a whole once the new one is complete.
    """
    path = check_output_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        permit_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

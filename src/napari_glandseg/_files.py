"""Writing files atomically: a crash or an error never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``dest``; on success it is renamed onto ``dest``.

    The temporary file lives in the destination's folder (so the rename is atomic) and is
    removed if the block raises. ``suffix`` keeps an extension writers look at.

    >>> import tempfile, pathlib
    >>> folder = tempfile.TemporaryDirectory()
    >>> dest = pathlib.Path(folder.name) / "a.txt"
    >>> with atomic_path(dest) as tmp:
    ...     _ = pathlib.Path(tmp).write_text("done")
    >>> dest.read_text(), sorted(p.name for p in dest.parent.iterdir())
    ('done', ['a.txt'])
    >>> folder.cleanup()
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file 0600; give it the mode a plain open() would have had: the
        # replaced file's, or 0666 less the umask for a new one
        os.chmod(tmp, dest.stat().st_mode & 0o7777 if dest.exists() else 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask

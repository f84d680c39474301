"""Writing files atomically: a crash or an error never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(dest, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``dest``; on success it is renamed onto ``dest``.

    The temporary file lives in the destination's folder (so the rename is atomic) and is
    removed if the block raises. ``suffix`` keeps an extension writers look at.

    >>> import tempfile, pathlib
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(dest) as tmp:
    ...     _ = pathlib.Path(tmp).write_text("done")
    >>> dest.read_text(), sorted(p.name for p in dest.parent.iterdir())
    ('done', ['a.txt'])
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

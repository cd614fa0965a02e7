"""Files that appear complete or not at all.

Every writer of an output file (safetensors, GGUF, the shard index, ONNX) goes through :func:`atomic_output`: the
data goes to a temporary file in the same folder (so the final rename stays on one file system), which is flushed,
fsync'ed, given the permissions a new file gets under the umask (``mkstemp`` creates it 0600), and only then renamed
over ``path``.  An error or a crash midway never leaves a partial file under ``path``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", **open_options) -> Iterator[IO]:
    """A file open on a temporary name beside ``path`` that replaces ``path`` when the block ends without an
    error; on an error the temporary file is removed and ``path`` is left as it was."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_options) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

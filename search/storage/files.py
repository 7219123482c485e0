"""Files of an index directory: what counts as a damaged cache, and temporary files that never outlive a failed save.

Every derived cache (FAISS, BM25 postings, more-like-this profiles, the duplicate index) is written to a temporary
file and renamed into place, its generation stamp last. A save that fails (a full disk: ENOSPC) must not leave the
temporary file behind for ever, and a cache file that is truncated or garbled must be rebuilt from SQLite, whatever
exception its reader happens to raise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from search.jsontypes import JSONObject

# What reading a truncated or garbled cache can raise: numpy's ``np.load`` of a damaged ``.npz`` raises
# ``BadZipFile`` (a bad CRC or no central directory), ``EOFError`` or ``zlib.error``; malformed arrays and JSON raise
# ``ValueError``, ``KeyError`` or ``IndexError``, JSON of the wrong shape (a number for a stamp) ``TypeError`` or
# ``AttributeError``; an unreadable file ``OSError``. Each means "rebuild it".
DAMAGED_CACHE: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
)


@contextmanager
def discarded_on_failure(*temporary: Path) -> Iterator[None]:
    """Remove ``temporary`` files if the block fails (and re-raise): a save cut short by a full disk leaves no
    ``.*.tmp`` file behind. On success the block has renamed them into place already."""
    try:
        yield
    except BaseException:
        for path in temporary:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise


def stamped(path: Path, is_current: Callable[[JSONObject], bool]) -> bool:
    """Whether the cache stamp at ``path`` (a JSON object naming the generation its cache was saved for) claims the
    current state, so that its cache must load: what ``newsdesk check`` looks at. False for a missing or stale stamp,
    which an open simply rebuilds; one of ``DAMAGED_CACHE`` for a damaged stamp."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return is_current(state)


def directory_writable(directory: Path, *files: Path) -> bool:
    """Whether this process can create files in ``directory`` and write ``files`` there (the SQLite store).

    The directory is found out by trying: ``os.access`` says yes to root on a read-only mount (``EROFS`` refuses root
    too) and knows nothing of mount options. A probe file is created and removed; a full disk (``ENOSPC``) still counts
    as writable, since that is a failure of each write, not a read-only index. The files are only asked (below)."""
    probe = directory / f".newsdesk-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        return exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError):
        probe.unlink()
    # The files themselves are asked, not opened: opening and closing a SQLite file that this process has connections
    # to would drop every POSIX lock SQLite holds on it (fcntl locks belong to the process and the file, and any
    # close releases them; https://sqlite.org/howtocorrupt.html, 2.2). A read-only mount failed the probe above, and
    # os.access answers for file permissions (root may write any file on a writable mount, as it says).
    return all(os.access(path, os.W_OK) for path in files if path.exists())


def file_crc32(path: Path, chunk: int = 1 << 20) -> int:
    """CRC-32 of a file, read in chunks: what a cache's stamp records so that an open can tell a garbled file (whose
    reader may load it without complaint: a flat FAISS index is raw floats) from the one it saved."""
    crc = 0
    with path.open("rb") as fh:
        left = os.fstat(fh.fileno()).st_size  # no further: a device (a link to /dev/zero) would never end
        while left > 0 and (block := fh.read(min(chunk, left))):
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc


def fsync_path(path: Path) -> None:
    """Flush a file or directory to disk: after writing a file and before renaming it into place, and after the
    rename (its directory), so a crash leaves the old file or the new one, never an empty one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


PREFETCH_CHUNK = 8 << 20


def prefetch(fd: int) -> None:
    """Read a memory-mapped cache file into the page cache in a background thread, so that an open stays a mapping
    of headers and the searches after it soon touch pages already read instead of faulting each one in from disk.
    Measured on the 924k-passage archive's 1.45 GB IVF base with a cold page cache: first searches 180-1,550 ms
    against 4-18 ms once the file is cached (bench/README.md, "The whole corpus, measured"); the kernel's
    ``POSIX_FADV_WILLNEED`` alone left most of the file unread. The thread reads a duplicate of ``fd`` sequentially
    (``pread`` releases the GIL) and ends at the file's end or its first error."""
    try:
        mine = os.dup(fd)
    except OSError:
        return

    def read_ahead() -> None:
        try:
            offset = 0
            while chunk := os.pread(mine, PREFETCH_CHUNK, offset):
                offset += len(chunk)
        except OSError:
            pass
        finally:
            os.close(mine)

    threading.Thread(target=read_ahead, name="newsdesk-prefetch", daemon=True).start()

"""What is wrong with a file found where aelab reads one, decided in one place.

Every reader of what is on disk (the dataset's IDX files, checkpoints, a run folder's
``last.ckpt``, latents files) asks ``fault_of(path)`` before it parses, and words its one line
from the class it returns, with the path and a fix for that class. Decided here, from what the
file system says:

- ``MISSING``: nothing there (or a symbolic link to nothing). Only this class sends aelab to
  the network, and only where downloads are on (``data.download``).
- ``NOT_A_FILE``: a directory, a pipe, a socket or a device stands there.
- ``UNREADABLE``: there, but the system refuses to read it (permissions, a loop of links, I/O).
- ``EMPTY``: a file of 0 bytes (cut short, e.g. by a full disk or an interrupted copy).

Decided by each format's parser, which alone knows what it expected (docs/errors.md, Fault classes):
corrupt bytes (a header, a length, the compression: ``data.idx``, ``runs.load_checkpoint``,
``tasks.encode.read_latents``) and the wrong shape or keys (``data.idx.read_split``,
``runs.load_weights``, ``tasks.encode.decode``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

MISSING = "missing"
NOT_A_FILE = "not a file"
UNREADABLE = "unreadable"
EMPTY = "empty"


@dataclass(frozen=True)
class Fault:
    kind: str  # MISSING, NOT_A_FILE, UNREADABLE or EMPTY
    found: str  # what is there, as the line says it: "is a directory, not a file"
    first: str  # what to do about it before the reader's own fix: "move it away, then "

    def line(self, subject: Path | str, fix: str, *, typed: bool = False) -> str:
        """``<subject> <what is there>; <fix>``: the reader's ``fix`` says what belongs there. A
        ``typed`` subject is a path the user gave (``ckpt_path=...``): the fix is another one."""
        first = self.first if not typed or self.kind == UNREADABLE else ""
        return f"{subject} {self.found}; {first}{fix}"


def fault_of(path: Path | str) -> Fault | None:
    """What stands in the way of reading ``path`` as a file, or ``None`` when nothing does."""
    try:
        found = os.stat(path)  # follows links: a link to a file is that file
    except FileNotFoundError:
        if os.path.islink(path):
            return Fault(MISSING, f"is a link to {os.readlink(path)}, which does not exist", "")
        return Fault(MISSING, "does not exist", "")
    except NotADirectoryError:
        blocking = next(p for p in Path(path).parents if p.exists())  # the first that exists is a file
        return Fault(UNREADABLE, f"cannot be read: {blocking} is not a folder", "move that file away, or ")
    except OSError as err:  # a loop of links, a parent that is a file, no permission on a parent
        return Fault(UNREADABLE, f"cannot be read ({err.strerror})", "make it readable, or ")
    if stat.S_ISDIR(found.st_mode):
        return Fault(NOT_A_FILE, "is a directory, not a file", "move it away, then ")
    if not stat.S_ISREG(found.st_mode):  # opening a pipe would wait for a writer
        return Fault(NOT_A_FILE, "is not a regular file (a pipe, socket or device)", "move it away, then ")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        return Fault(UNREADABLE, f"cannot be read ({err.strerror})", "make it readable, or ")
    if found.st_size == 0:
        return Fault(EMPTY, "is empty (0 bytes: cut short, e.g. by a full disk)", "replace it: ")
    return None

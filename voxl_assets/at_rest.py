"""Files at rest: everything VOXL writes is readable by VOXL's own account only.

The raw cache holds identifiable studies, the VOXL database holds MRNs and accession numbers, the
secrets folder holds keys, and Dagster's storage and logs name partitions and runs. Two layers keep
them private whatever the umask of the shell or service manager that started VOXL:

- **A process umask of 0o077**, set by every VOXL entry point (the ``voxl`` command and the code
  location, which every Dagster process that runs VOXL code imports: code servers, run workers,
  Celery step workers). Everything a process creates is then 0700 (folders) / 0600 (files),
  including what libraries write with their own defaults: SQLite and its journals, pyarrow,
  pydicom, zip files, Dagster's storage and compute logs. Processes started from those (``dagster
  dev`` from ``voxl demo``) inherit it.
- **Explicit modes** on the roots VOXL creates (``VOXL_HOME``, ``DAGSTER_HOME``, the raw cache, the
  anonymised store, exports, secrets, the local destinations' root) and on the database and key
  files, so a process that skipped the entry points (an operator's own ``dagster-webserver``, a
  script) still cannot expose anything: nothing inside a 0700 folder can be reached by another
  account. An existing root owned by VOXL's account that others could read is tightened once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def restrict_umask() -> int:
    """Add 0o077 to the process umask (never loosening it); returns the previous umask."""
    previous = os.umask(PRIVATE_UMASK)
    os.umask(previous | PRIVATE_UMASK)
    return previous


def make_private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Create ``path`` and any missing parents as 0700 folders, whatever the umask.

    An existing ``path`` owned by this account that grants group or other access is tightened
    to drop those bits (``tighten``), so a folder made by an older VOXL is closed on upgrade;
    one owned by another account is left as it is (the operator's choice). Returns ``path``.
    """
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by a concurrent process: checked below like an existing one
        os.chmod(folder, PRIVATE_DIR_MODE)  # the umask may have removed owner bits
    if tighten and path not in missing:
        _tighten(path)
    return path


def _tighten(path: Path) -> None:
    info = path.stat()
    if info.st_uid != os.geteuid() or not info.st_mode & 0o077:
        return
    os.chmod(path, info.st_mode & 0o7700)
    log.info("made %s private (mode 0%o)", path, info.st_mode & 0o700)


def make_private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist (an existing file owned by this
    account is tightened to 0600). Use before a library opens it with its own default mode."""
    make_private_dir(path.parent, tighten=False)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        info = os.fstat(descriptor)
        if info.st_uid == os.geteuid() and info.st_mode & 0o777 != PRIVATE_FILE_MODE:
            os.fchmod(descriptor, PRIVATE_FILE_MODE)
    finally:
        os.close(descriptor)
    return path

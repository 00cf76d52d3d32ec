"""The data dir holds secrets: it is 0700 and every file in it 0600.

It keeps the shared secrets (in the clear: HMAC needs them), users' long-term keys, the REST
secret, the test-link key and the self-signed TLS key. Files are created private (explicit modes,
never the umask's), and an install made by an older version is tightened on start: each fix is
logged once, naming the path and the old and new mode.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600

log = logging.getLogger("iceward.datadir")


def ensure_private_dir(path: Path) -> Path:
    """``path`` created 0700 if missing (parents as the umask says), then :func:`tighten`."""
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        path.chmod(DIR_MODE)  # mkdir's mode passes through the umask
    tighten(path)
    return path


def tighten(data_dir: Path) -> list[tuple[Path, int, int]]:
    """Take group and other permissions off ``data_dir`` and everything in it (symlinks are
    not followed). Returns the fixes: (path, old mode, new mode), each logged once."""
    fixes: list[tuple[Path, int, int]] = []
    if not data_dir.is_dir():
        return fixes
    _fix(data_dir, os.stat(data_dir), fixes)
    for root, dirs, files in os.walk(data_dir):
        for name in [*dirs, *files]:
            path = Path(root) / name
            try:
                info = os.lstat(path)
            except OSError:  # gone meanwhile
                continue
            if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
                _fix(path, info, fixes)
    return fixes


def _fix(path: Path, info: os.stat_result, fixes: list[tuple[Path, int, int]]) -> None:
    old = stat.S_IMODE(info.st_mode)
    if not old & 0o077:
        return
    new = old & ~0o077
    try:
        os.chmod(path, new)  # symlinks were skipped: lchmod does not exist on Linux
    except OSError as exc:
        log.error(
            "cannot tighten the permissions of %s (mode %04o; it may hold secrets): %s",
            path, old, exc.strerror,
        )  # fmt: skip
        return
    fixes.append((path, old, new))
    log.warning(
        "tightened the permissions of %s from %04o to %04o (the data dir holds secrets)",
        path, old, new,
    )  # fmt: skip


def create_private_file(path: Path, data: bytes) -> None:
    """Write a new file readable by this user only (fails if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def replace_private_file(path: Path, data: bytes) -> None:
    """Write ``path`` readable by this user only, atomically: a reader sees the old content
    or the new, never a part (a temporary file beside it, renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    create_private_file(tmp, data)
    os.replace(tmp, path)


def signing_key(data_dir: Path, name: str) -> bytes:
    """The HMAC key kept in ``data_dir/name`` (the directory 0700), made (0600, 32 random bytes
    in hex) the first time: tokens signed with it outlive a restart."""
    path = data_dir / name
    if not path.exists():
        ensure_private_dir(data_dir)
        create_private_file(path, secrets.token_hex(32).encode())
    return path.read_bytes().strip()

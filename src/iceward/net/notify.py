"""systemd's service notification protocol (``sd_notify``), spoken without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a Unix datagram socket (a path, or a
name in the abstract namespace when it starts with ``@``), and each notification is one datagram
of ``KEY=VALUE`` lines: ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``,
``WATCHDOG=1``. With ``WatchdogSec=`` it also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``,
the process meant), and expects ``WATCHDOG=1`` more often than that.

Without ``$NOTIFY_SOCKET`` every call does nothing, so the server speaks it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("iceward.server")


class SystemdNotifier:
    """Sends notifications to the socket ``environ`` names (none: every call is a no-op)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        #: Seconds between two WATCHDOG=1 (half systemd's timeout), None without a watchdog.
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=VALUE``) as one datagram; False if not sent (logged once)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd on %s: %s", self.address, exc)
            self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping: ending allocations")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

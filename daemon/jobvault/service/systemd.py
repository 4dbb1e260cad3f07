"""systemd integration: readiness notification (sd_notify) and socket activation.

Both protocols are a few lines of documented wire format (sd_notify(3), sd_listen_fds(3));
the Python bindings that exist either need libsystemd at build time or are unmaintained, so
they are implemented here, with tests against real sockets. Everything is a no-op outside
systemd.
"""

from __future__ import annotations

import os
import socket
import stat

import structlog

log = structlog.get_logger("jobvault.systemd")

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET (a datagram socket; `@` = abstract)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address:
            target = self.address
            if target.startswith("@"):
                target = "\0" + target[1:]
            self._target = target
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> None:
        """Send `KEY=value` lines (e.g. READY=1, STATUS=…); errors are logged, never raised."""
        if self._sock is None:
            return
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(message, self._target)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def status(self, status: str) -> None:
        self.send(status=status)

    def stopping(self) -> None:
        self.send(stopping=1, status="stopping")

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds, when the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2 / 1_000_000
    except ValueError:
        return None


def listen_socket() -> socket.socket | None:
    """The listening Unix socket passed by systemd socket activation, if any.

    Uses the first passed descriptor ($LISTEN_FDS ≥ 1 and $LISTEN_PID is this process) and
    clears the variables so children do not inherit them.
    """
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if not pid or not count or pid != str(os.getpid()):
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    try:
        if int(count) < 1:
            return None
    except ValueError:
        return None
    fd = SD_LISTEN_FDS_START
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        log.warning("listen_fd_not_a_socket", fd=fd)
        return None
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        log.warning("listen_fd_wrong_kind", family=str(sock.family), type=str(sock.type))
        sock.detach()
        return None
    os.set_inheritable(fd, False)
    sock.setblocking(False)
    return sock

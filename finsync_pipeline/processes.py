"""The ports and child processes of finsync's long-running commands (ui, deploy, sandbox).

A busy port is told as the port and the flag that sets it, before anything starts. Stopping
a command stops everything it started: Dagster's webserver, daemon and code servers start
processes of their own, which a signal to the direct child alone can leave running. The
children stay in the command's process group, so Ctrl-C in a terminal, or a signal to the
group, reaches them as before.
"""

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any

from finsync_pipeline.errors import ConfigurationError

STOP_GRACE_S = 30.0


def busy_port_error(host: str, port: int, what: str, flag: str) -> ConfigurationError:
    """The one line for a port another process listens on."""
    return ConfigurationError(
        f"port {port} on {host} ({what}) is in use by another process; stop it or pass another "
        f"{flag}"
    )


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Raise a ConfigurationError naming ``port`` when something already listens on it.

    Bound as the servers bind (SO_REUSEADDR), so a port in TIME_WAIT counts as free.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise busy_port_error(host, port, what, flag) from None
            raise ConfigurationError(
                f"cannot listen on {host}:{port} ({what}): {e.strerror}"
            ) from e


class Stopped(Exception):
    """SIGTERM arrived: stop as Ctrl-C does."""


def _raise_stopped(_signum: int, _frame: FrameType | None) -> None:
    raise Stopped


def stop_on_sigterm() -> Any:
    """Make SIGTERM raise ``Stopped`` in the main thread; returns the previous handler."""
    return signal.signal(signal.SIGTERM, _raise_stopped)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: the fields follow its last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def stop_tree(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """Stop ``proc`` and everything it started: SIGTERM to ``proc`` (Dagster stops its own
    children on it), then SIGKILL whatever of the tree is left after ``grace_s``.

    The tree is taken before the signal: a child whose parent has exited is no longer below
    ``proc`` in /proc, but must not outlive the command.
    """
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (proc.poll() is None or any(map(alive, tree))):
        time.sleep(0.2)
    for pid in [*tree, *descendants(proc.pid), *_own_group()]:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _own_group() -> list[int]:
    """The other processes of this command's process group, when the command leads it (as a
    shell starts it): what Dagster started after the tree was taken (a run worker the daemon
    launched) and whose parent has exited is in no tree, but is still in the group. A command
    that does not lead its group leaves the group alone: it is not the command's."""
    me = os.getpid()
    if os.getpgrp() != me:
        return []
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == me:
                    members.append(int(entry.name))
    return members

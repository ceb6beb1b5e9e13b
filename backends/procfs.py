"""A workload's processes and host memory, read from ``/proc`` and the
cgroup filesystem of this host.

Owns what ``NativeBackend.footprint`` measures: the process tree of a server
(its process group, plus every descendant, since a forking server's children
may leave the group with ``setsid``) and the memory it holds, as the sum of
each process's PSS (``smaps_rollup``), falling back to RSS (``statm``) for a
process whose PSS cannot be read. PSS rather than RSS so that pages the tree
shares (a forked worker's copy-on-write pages, shared libraries) count once.

And, for the container backends, a container's memory read straight from its
memory cgroup (``container_memory``) when the container runs on this host:
the same figure ``docker stats`` computes, without the engine's stats call
(dockerd answers one only at its next 1 s collection, even in one-shot mode).

Every function blocks (one small file per process): call them on a thread.
``proc`` and ``cgroup_root`` name the roots so tests can read made-up ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

PROC = "/proc"
CGROUP_ROOT = "/sys/fs/cgroup"
_PAGE = os.sysconf("SC_PAGE_SIZE")
# Zombies ("Z") and dead tasks ("X") hold no memory and no device context.
_GONE_STATES = frozenset("ZX")


@dataclass(frozen=True, slots=True)
class _Stat:
    pid: int
    ppid: int
    pgrp: int
    state: str


def _read_stat(proc: str, pid: int) -> _Stat | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:  # exited meanwhile
        return None
    # The command name is in parentheses and may itself hold spaces and ")".
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    if len(fields) < 3:
        return None
    try:
        return _Stat(pid, ppid=int(fields[1]), pgrp=int(fields[2]), state=fields[0])
    except ValueError:
        return None


def _all_stats(proc: str) -> list[_Stat]:
    out: list[_Stat] = []
    try:
        names = os.listdir(proc)
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            stat = _read_stat(proc, int(name))
            if stat is not None:
                out.append(stat)
    return out


def process_tree(
    leader: int, proc: str = PROC, *, leader_alive: bool = True
) -> frozenset[int]:
    """The live processes of ``leader``'s group and all their descendants.

    The group catches what outlived its parent (a grandchild re-parented to
    init); descendants catch children that started their own session or
    group. ``leader_alive`` False: the leader has exited and been reaped, so
    its pid may be another process's now; only its group still counts (a
    group id is not reused while the group has members). Empty when nothing
    of it is left.
    """
    stats = _all_stats(proc)
    children: dict[int, list[int]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s.pid)
    live = {s.pid for s in stats if s.state not in _GONE_STATES}
    found = {s.pid for s in stats if s.pgrp == leader}
    if leader_alive and any(s.pid == leader for s in stats):
        found.add(leader)  # a leader that left its own group is still the server
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return frozenset(found & live)


# In every native server's environment: which swapvisor started it, and which
# start of that swapvisor it is ("<swapvisor pid>.<n>"). Its descendants
# inherit it, so they can be found after they left the server's group and
# tree: a daemon that called setsid and whose parent has exited hangs off
# init, not off the server.
MARK = "SWAPVISOR_SERVER"


def marked(value: str, proc: str = PROC, *, prefix: bool = False) -> frozenset[int]:
    """Live processes whose environment has ``SWAPVISOR_SERVER=value`` (with
    ``prefix``: a value starting with ``value``). Reads every process's
    ``environ`` (readable for our own user's processes, or all as root)."""
    needle = f"\0{MARK}={value}".encode() + (b"" if prefix else b"\0")
    found: set[int] = set()
    try:
        names = os.listdir(proc)
    except OSError:
        return frozenset()
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or another user's
            continue
        if needle in b"\0" + env + b"\0":
            found.add(int(name))
    return frozenset(found)


def _pss(proc: str, pid: int) -> int | None:
    """PSS in bytes, None when ``smaps_rollup`` cannot be read (kernels before
    4.14, or no ptrace access to the process)."""
    try:
        with open(f"{proc}/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss(proc: str, pid: int) -> int | None:
    try:
        with open(f"{proc}/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def tree_memory(pids: frozenset[int], proc: str = PROC) -> int | None:
    """Host bytes held by ``pids``: PSS, else RSS, per process, summed.

    None when no process's figure could be read (all gone meanwhile).
    """
    total: int | None = None
    for pid in pids:
        used = _pss(proc, pid)
        if used is None:
            used = _rss(proc, pid)
        if used is not None:
            total = (total or 0) + used
    return total


def container_memory(
    pids: Iterable[int],
    container_id: str,
    proc: str = PROC,
    cgroup_root: str = CGROUP_ROOT,
) -> int | None:
    """The memory cgroup usage of the container ``container_id`` (its full
    id), found through one of its ``pids``, without the inactive file cache
    (as ``docker stats``: cgroup v1 ``usage_in_bytes - total_inactive_file``,
    v2 ``memory.current - inactive_file``).

    None when it cannot be read here: the engine is on another host or in
    another pid namespace (the pids are not this host's processes, or are
    other ones: the cgroup path must name the container), or the cgroup
    files are not mounted.
    """
    for pid in sorted(pids):
        directory = _memory_cgroup(pid, container_id, proc, cgroup_root)
        if directory is not None:
            used = _cgroup_usage(directory)
            if used is not None:
                return used
    return None


def _memory_cgroup(
    pid: int, container_id: str, proc: str, cgroup_root: str
) -> tuple[str, bool] | None:
    """The memory cgroup directory of ``pid`` and whether it is cgroup v1,
    if that cgroup is the container's."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    unified: str | None = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if container_id not in path:
            continue
        if "memory" in controllers.split(","):
            return f"{cgroup_root}/memory{path}", True
        if hierarchy == "0" and not controllers:
            unified = path
    if unified is None:
        return None
    # A v1 memory line wins (hybrid hosts mount a controller-less v2 tree at
    # unified/); on a pure v2 host the tree is the root itself.
    return f"{cgroup_root}{unified}", False


def _cgroup_usage(where: tuple[str, bool]) -> int | None:
    directory, v1 = where
    usage_file, inactive_key = (
        ("memory.usage_in_bytes", "total_inactive_file")
        if v1
        else ("memory.current", "inactive_file")
    )
    try:
        with open(f"{directory}/{usage_file}", "rb") as f:
            usage = int(f.read())
        inactive = 0
        with open(f"{directory}/memory.stat", "rb") as f:
            for line in f:
                key, _, value = line.partition(b" ")
                if key.decode() == inactive_key:
                    inactive = int(value)
                    break
    except (OSError, ValueError):
        return None
    return usage - inactive if inactive < usage else usage

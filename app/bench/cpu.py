"""CPU time of the embedded stack's processes, by role, read from ``/proc`` (Linux).

Why: on a shared 2-core host the pipeline's wall-clock figures move by 15-30% with whatever
else runs, while the CPU each process spends per event hardly moves. ``bench pipeline``
reports both, so a change can be judged by where its CPU went, not only by a noisy rate.

Roles: ``worker`` (the stream worker's own process: Faust, the canonical and identity stages),
``profiles`` (its profile-stage child, named ``lcdp-profiles``; the worker itself when
``LOYALTY_CDP_PROFILE_PROCESS=0``), ``decisions`` (its decisioning child), ``api`` (its API
child), ``postgres`` (the server and
every backend), ``broker`` and ``cdc``. A process that exits between two readings keeps its
time in the role: once reaped, the kernel adds it to its parent's (``cutime``/``cstime``),
and each process counts its reaped children's time with its own (so a replaced child of the
worker, once reaped, counts as the worker's). Without that, PostgreSQL's figure went negative
in a run where backends exited during the latency phase (session 10).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PROFILES_NAME", "ROLES", "cores", "cpu_by_role", "per_event_ms", "stage_processes"]

ROLES = ("worker", "profiles", "decisions", "api", "postgres", "broker", "cdc")
#: ``streams.profile_process.PROCESS_NAME`` (not imported: that module imports Faust)
PROFILES_NAME = "lcdp-profiles"
_PROC = Path("/proc")


def _table() -> tuple[dict[int, int], dict[int, float], dict[int, str]]:
    """(parent, cpu seconds, command line) of every readable process; a process's seconds
    include those of its children that exited and were reaped (see the module doc)."""
    tick = os.sysconf("SC_CLK_TCK")
    ppid: dict[int, int] = {}
    cpu: dict[int, float] = {}
    cmd: dict[int, str] = {}
    for d in _PROC.iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd[pid] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cmd[pid] += " comm=" + (d / "comm").read_text().strip()
        except OSError:
            continue
        ppid[pid] = int(fields[1])
        # utime, stime, cutime, cstime (stat fields 14-17)
        cpu[pid] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    return ppid, cpu, cmd


def _tree(root: int, ppid: Mapping[int, int]) -> set[int]:
    out = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in ppid.items():
            if parent in out and pid not in out:
                out.add(pid)
                grew = True
    return out


def stage_processes(worker: int) -> list[int]:
    """The worker and its profile-stage child: the processes that hold the stages' state
    (the member states live in the child; with ``LOYALTY_CDP_PROFILE_PROCESS=0`` there is
    none and this is the worker alone)."""
    if not _PROC.is_dir():
        return [worker]
    ppid, _, cmd = _table()
    return [worker, *sorted(p for p, up in ppid.items() if up == worker and _profiles(cmd[p]))]


def _profiles(line: str) -> bool:
    """Whether a :func:`_table` command line is the profile-stage child's."""
    return line.endswith(f" comm={PROFILES_NAME}")


def cpu_by_role(roots: Mapping[str, int | None]) -> dict[str, float]:
    """CPU seconds so far of each role, from the pids of ``worker``, ``postgres`` (the
    postmaster), ``broker`` and ``cdc``; the worker's children are split by what they run."""
    if not _PROC.is_dir():
        return {}
    ppid, cpu, cmd = _table()
    out = dict.fromkeys(ROLES, 0.0)
    for role, root in roots.items():
        if root is None or root not in cpu:
            continue
        for pid in _tree(root, ppid):
            r = role
            if role == "worker" and pid != root:
                line = cmd.get(pid, "")
                r = (
                    "api" if "api_server" in line
                    else "profiles" if _profiles(line)
                    else "decisions"
                )
            out[r] += cpu.get(pid, 0.0)
    return out


def per_event_ms(
    before: Mapping[str, float], after: Mapping[str, float], events: int
) -> dict[str, float]:
    """CPU milliseconds per event of each role between two readings, and their ``total``."""
    return _per(before, after, events / 1000)


def cores(
    before: Mapping[str, float], after: Mapping[str, float], seconds: float
) -> dict[str, float]:
    """Cores each role kept busy between two readings ``seconds`` apart, and their
    ``total``: what the stack asks of the host at a steady rate (per-row CPU over a window
    that also holds waits and tails overstates it)."""
    return _per(before, after, seconds)


def _per(before: Mapping[str, float], after: Mapping[str, float], unit: float) -> dict[str, float]:
    """Each role's CPU seconds between two readings divided by ``unit``, and their ``total``
    (empty without both readings or a positive unit)."""
    if not before or not after or unit <= 0:
        return {}
    out = {r: round((after[r] - before[r]) / unit, 3) for r in ROLES}
    out["total"] = round(sum(out.values()), 3)
    return out

"""Detached child processes of the embedded stack, tracked by pid files.

``loyalty-cdp up`` starts long-lived processes (broker, CDC runner, worker) that must outlive
the CLI call, and ``down`` must stop exactly those processes and nothing else, leaving no
orphan. Each process is started in a new session (its own process group) so that stopping it
also stops anything it forked, and its pid file records the kernel start time of the process,
so a recycled pid after a reboot is never mistaken for ours.

Priority: the stream processes (broker, CDC runner, the worker's stages and its decisioning
process) run :func:`stream_nice` steps below the decision API and PostgreSQL. On one host a
checkout waiting on ``POST /v1/decisions`` should not queue behind a stage's batch or the
broker's fetch loop; the streams lose nothing but a few milliseconds when the API is busy,
and nothing at all when it is idle (niceness only matters when the cores are contended).
Measured: at 500 req/s the API's p99 went from 12-19 ms to about 11 ms with only that
change, on the 2-core host with the stack idle (docs/benchmarks-history.md, session 3).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.stack.errors import StackError

__all__ = ["ManagedProcess", "decisions_nice", "stream_nice"]

#: niceness of the stream processes unless ``LOYALTY_CDP_STREAM_NICE`` says otherwise
DEFAULT_STREAM_NICE = 10
#: further niceness of the decisioning process unless ``LOYALTY_CDP_DECISIONS_NICE`` says so
DEFAULT_DECISIONS_NICE = 5


def _nice_setting(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise StackError(f"{name} must be an integer from 0 to 19, not {raw!r}")
    return value


def stream_nice() -> int:
    """``$LOYALTY_CDP_STREAM_NICE`` (0–19, default 10): how far below the API the stream
    processes run; 0 runs everything at the same priority."""
    return _nice_setting("LOYALTY_CDP_STREAM_NICE", DEFAULT_STREAM_NICE)


def decisions_nice() -> int:
    """``$LOYALTY_CDP_DECISIONS_NICE`` (0–19, default 5): how far below the stream stages the
    decisioning process runs.

    Why: on a saturated host the decisions of a burst took two thirds of the pipeline's CPU
    (``bench pipeline`` ``cpu_ms_per_event_with_offers``) and slowed the stages that keep
    points, tiers and loyalty events exact. An offer is derived from a loyalty event and can
    wait for it; the reverse is not true. With spare CPU the priority changes nothing; under
    a burst decisions lag (visible in the lag metrics) and catch up once the stages have.
    """
    return _nice_setting("LOYALTY_CDP_DECISIONS_NICE", DEFAULT_DECISIONS_NICE)


def _start_ticks(pid: int) -> str | None:
    """Process start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; it is wrapped in parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is not running
        return None
    return fields[19]


@dataclass(frozen=True)
class ManagedProcess:
    """One named process of the stack: ``<run_dir>/<name>.pid`` and ``<log_dir>/<name>.log``."""

    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid if the recorded process is still the one we started and is alive."""
        try:
            pid_s, ticks = self.pid_file.read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_s)
        return pid if _start_ticks(pid) == ticks else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        nice: int = 0,
    ) -> int:
        """Start ``argv`` detached (new session), stdout and stderr appended to the log,
        ``nice`` steps below this process's priority (through ``nice(1)``, which execs the
        command: same pid, and every thread the command starts inherits the priority)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        nice_bin = shutil.which("nice") if nice > 0 else None
        prefix = [nice_bin, "-n", str(nice)] if nice_bin else []
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [*prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        ticks = None
        for _ in range(100):
            ticks = _start_ticks(proc.pid)
            if ticks:
                break
            time.sleep(0.01)
        self.pid_file.write_text(f"{proc.pid} {ticks}\n")
        return proc.pid

    def exited_early(self) -> bool:
        """True if the process we just started is already gone (it failed to start)."""
        return not self.is_running()

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL after ``timeout``. True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _start_ticks(pid) is not None:
            _reap(pid)
            time.sleep(0.05)
        if _start_ticks(pid) is not None:
            self._signal_group(pid, signal.SIGKILL)
            while _start_ticks(pid) is not None:
                _reap(pid)
                time.sleep(0.05)
        # Children that ignored SIGTERM but outlived the leader: no orphans.
        self._signal_group(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the whole group at once (crash simulation in tests)."""
        pid = self.pid()
        if pid is not None:
            self._signal_group(pid, signal.SIGKILL)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (avoids zombies)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

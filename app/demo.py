"""``loyalty-cdp demo``: the embedded stack, live synthetic traffic and a live terminal view.

1. ``up`` (wall clock): PostgreSQL, broker, Debezium, one stream worker;
2. a traffic thread runs the simulator round after round, each round a fresh seed (the
   simulator namespaces every id with the seed, so rounds and reruns never collide) whose
   history ends now, written at ``--rate`` rows/s spread over the three sources;
3. the view, refreshed twice a second: canonical and loyalty events/s (from the topics'
   high watermarks, so it survives a worker restart), lag per stage (the worker group's
   committed offsets, as ``wait --caught-up`` reads them), members per tier (the profile
   store), the DLQ size and the latest loyalty events (type, member id, effective time and
   one key number; never an email or phone). Without a TTY it prints one plain line per
   refresh instead.

Ctrl-C (or SIGTERM, or ``--duration``) stops the traffic at its next commit, prints a
summary and runs ``down`` (which drains what was captured), so no process is left behind;
``--keep-running`` leaves the stack up for ``status``, ``profiles export`` or the API.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import typer
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from app.cdc.connectors import load_connectors
from app.settings import settings
from app.simulate import SOURCES, SimulationError, simulate
from app.simulate_cli import default_start
from app.stack import embedded
from app.stack.pipeline import STAGES
from app.stack.postgres import dsn_for
from app.stack.state import StackPaths, StackState
from streams.metrics import StageLag
from streams.topics import CANONICAL, DLQ, LOYALTY

__all__ = ["register", "run_demo"]

REFRESH_S = 0.5
RATE_WINDOW_S = 3.0
LATEST = 10
TIERS = ("member", "silver", "gold", "platinum")


class _Stopped(Exception):
    """Raised from the simulator's progress callback to stop the writers at a commit."""


class Traffic(threading.Thread):
    """Simulator rounds until stopped; ``rows`` counts the rows committed so far."""

    def __init__(self, dsns: dict[str, str], members: int, days: int, rate: float) -> None:
        super().__init__(name="demo-traffic", daemon=True)
        self.dsns, self.members, self.days, self.rate = dsns, members, days, rate
        self.stop = threading.Event()
        self.rows = 0
        self.rounds = 0
        self.error: str | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            seed = time.time_ns() // 1_000_000 % 1_000_000_000  # new id namespace per round
            base = self.rows

            def progress(done: int, _total: int, base: int = base) -> None:
                self.rows = base + done
                if self.stop.is_set():
                    raise _Stopped

            try:
                simulate(
                    self.dsns,
                    self.members,
                    self.days,
                    self.rate,
                    seed,
                    default_start(self.days),
                    progress,
                )
            except _Stopped:
                return
            except (SimulationError, OSError, psycopg.Error) as exc:
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return
            self.rounds += 1


@dataclass
class Snapshot:
    at: float
    canonical: int = 0  # messages on cdp.events
    loyalty: int = 0  # messages on loyalty.events
    dlq: int = 0
    lag: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    guests: int = 0


class Observer:
    """Everything the view shows, read from the broker and the profile store."""

    def __init__(self, state: StackState) -> None:
        self.store = psycopg.connect(
            dsn_for(state.pg_port, "cdp"), autocommit=True, connect_timeout=5
        )
        self.lag = StageLag(state.broker, STAGES(load_connectors(settings().connectors_dir)))
        self.tail = Consumer(
            {
                "bootstrap.servers": state.broker,
                "group.id": "loyalty-cdp-demo",
                "enable.auto.commit": False,
                "socket.timeout.ms": 5000,
            }
        )
        self.counted = self.lag.partitions((CANONICAL, LOYALTY, DLQ))
        self.tail.assign(
            [TopicPartition(t, p, OFFSET_END) for t, p in _pairs(self.counted) if t == LOYALTY]
        )
        self.latest: deque[dict[str, Any]] = deque(maxlen=LATEST)
        self.history: deque[Snapshot] = deque()
        self.first: Snapshot | None = None

    def poll(self) -> Snapshot:
        snap = Snapshot(time.monotonic())
        try:
            high = self.lag.high_watermarks(self.counted)
            sums = {t: 0 for t in (CANONICAL, LOYALTY, DLQ)}
            for (t, _), n in high.items():
                sums[t] += n
            snap.canonical, snap.loyalty, snap.dlq = sums[CANONICAL], sums[LOYALTY], sums[DLQ]
            snap.lag = self.lag.measure()
            for m in self.tail.consume(500, timeout=0):
                value = m.value()
                if m.error() is None and value is not None:
                    self.latest.append(_brief(value))
        except KafkaException:
            pass  # broker busy: keep the previous figures
        for tier, is_member, n in self.store.execute(
            "SELECT tier, member_id IS NOT NULL, count(*) FROM profiles GROUP BY 1, 2"
        ):
            if is_member:
                snap.tiers[tier] = snap.tiers.get(tier, 0) + n
            else:
                snap.guests += n
        self.first = self.first or snap
        self.history.append(snap)
        while len(self.history) > 2 and snap.at - self.history[0].at > RATE_WINDOW_S:
            self.history.popleft()
        return snap

    def rates(self) -> tuple[float, float]:
        """Canonical and loyalty events per second over the last few seconds."""
        old, new = self.history[0], self.history[-1]
        dt = new.at - old.at
        if dt <= 0:
            return 0.0, 0.0
        return (new.canonical - old.canonical) / dt, (new.loyalty - old.loyalty) / dt

    def close(self) -> None:
        for c in (self.tail, self.lag, self.store):
            with contextlib.suppress(KafkaException, RuntimeError, psycopg.Error):
                c.close()


def _pairs(tps: list[TopicPartition]) -> list[tuple[str, int]]:
    return [(tp.topic, tp.partition) for tp in tps]


def _brief(value: bytes) -> dict[str, Any]:
    """Type, member id, effective time and one key number of a loyalty event (no PII)."""
    ev = orjson.loads(value)
    data = ev.get("data", {})
    if "to_tier" in data:
        key = f"{data.get('from_tier')} -> {data['to_tier']}"
    elif "milestone" in data:
        key = f"milestone {data['milestone']}"
    elif "points" in data:
        key = f"{data['points']} pts"
    elif isinstance(data.get("changed"), list | dict):
        key = ", ".join(sorted(data["changed"]))  # consent names, never their holders
    elif "next_tier" in data:
        key = f"next {data['next_tier']}"
    else:
        key = f"balance {data.get('balance', '')}"
    return {
        "type": str(ev.get("type", "")).removeprefix("loyalty."),
        "member": data.get("member_id") or "(guest)",
        "at": str(data.get("effective_at", ev.get("time", "")))[:19].replace("T", " "),
        "key": key,
    }


def _render(obs: Observer, snap: Snapshot, traffic: Traffic, elapsed: float) -> Group:
    canon_s, loyal_s = obs.rates()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan")
    head.add_column()
    dot = " [dim]·[/dim] "
    head.add_row("running", f"{elapsed:.0f}s{dot}source rows written [b]{traffic.rows}[/b]")
    head.add_row(
        "events/s",
        f"canonical [b]{canon_s:.1f}[/b] ({snap.canonical}){dot}"
        f"loyalty [b]{loyal_s:.1f}[/b] ({snap.loyalty})",
    )
    head.add_row("lag", dot.join(f"{k} [b]{v}[/b]" for k, v in snap.lag.items()))
    head.add_row(
        "profiles",
        dot.join(f"{t} [b]{snap.tiers.get(t, 0)}[/b]" for t in TIERS)
        + f"{dot}guests [b]{snap.guests}[/b]",
    )
    head.add_row("DLQ", f"[b]{snap.dlq}[/b]")
    events = Table(title="latest loyalty events", expand=True)
    for col in ("type", "member", "effective (UTC)", "key"):
        events.add_column(col, no_wrap=True)
    for e in reversed(obs.latest):
        events.add_row(e["type"], e["member"], e["at"], e["key"])
    return Group(head, events)


def _line(obs: Observer, snap: Snapshot, traffic: Traffic, elapsed: float) -> str:
    canon_s, loyal_s = obs.rates()
    lag = " ".join(f"{k}={v}" for k, v in snap.lag.items())
    tiers = " ".join(f"{t}={snap.tiers.get(t, 0)}" for t in TIERS)
    return (
        f"t={elapsed:.0f}s rows={traffic.rows} canonical/s={canon_s:.1f} loyalty/s={loyal_s:.1f}"
        f" lag[{lag}] members[{tiers}] guests={snap.guests} dlq={snap.dlq}"
    )


def _summary(
    obs: Observer | None, snap: Snapshot | None, traffic: Traffic | None, elapsed: float
) -> str:
    if obs is None or snap is None or traffic is None:
        return f"demo summary: stopped after {elapsed:.0f}s before traffic started"
    first = obs.first or snap
    members = sum(snap.tiers.values())
    tiers = ", ".join(f"{t} {snap.tiers.get(t, 0)}" for t in TIERS)
    return (
        f"demo summary: {elapsed:.0f}s, {traffic.rows} source rows in {traffic.rounds} full"
        f" round(s); {snap.canonical - first.canonical} canonical events,"
        f" {snap.loyalty - first.loyalty} loyalty events; {members} members ({tiers}),"
        f" {snap.guests} guests; DLQ {snap.dlq}; lag "
        + ", ".join(f"{k} {v}" for k, v in snap.lag.items())
    )


def _raise_interrupt(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run_demo(
    state_dir: Path,
    *,
    members: int,
    days: int,
    rate: float,
    duration: float | None,
    keep_running: bool,
    console: Console,
) -> int:
    """Run until Ctrl-C/SIGTERM or ``duration`` seconds of traffic; returns the exit code."""
    say = console.print
    signal.signal(signal.SIGTERM, _raise_interrupt)
    traffic: Traffic | None = None
    obs: Observer | None = None
    snap: Snapshot | None = None
    began = time.monotonic()
    code = 0
    try:
        st = embedded.up(state_dir, clock="wall", say=say)
        state = StackPaths(state_dir.resolve()).load()
        assert state is not None
        say(f"API {st['api']} (GET /v1/members/<id>, /metrics, /healthz); Ctrl-C to stop")
        traffic = Traffic({s: st["sources"][s] for s in SOURCES}, members, days, rate)
        traffic.start()
        obs = Observer(state)
        began = time.monotonic()
        deadline = None if duration is None else began + duration
        live = (
            Live(console=console, auto_refresh=False, transient=False)
            if console.is_terminal
            else None
        )
        if live is not None:
            live.start()
        try:
            while deadline is None or time.monotonic() < deadline:
                snap = obs.poll()
                elapsed = time.monotonic() - began
                if live is not None:
                    live.update(_render(obs, snap, traffic, elapsed), refresh=True)
                else:
                    print(_line(obs, snap, traffic, elapsed), flush=True)
                if traffic.error is not None:
                    say(f"[red]error:[/red] simulator stopped: {traffic.error}")
                    code = 1
                    break
                time.sleep(max(0.0, REFRESH_S - (time.monotonic() - snap.at)))
        finally:
            if live is not None:
                live.stop()
    except KeyboardInterrupt:
        say("stopping ...")
    finally:
        # A second Ctrl-C must not cut `down` short and orphan processes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if traffic is not None:
                traffic.stop.set()
                traffic.join(timeout=30)
            if obs is not None:
                with contextlib.suppress(psycopg.Error, KafkaException):
                    snap = obs.poll()
                say(_summary(obs, snap, traffic, time.monotonic() - began))
                obs.close()
            if keep_running:
                say(f"stack left running; stop it with `loyalty-cdp down --state-dir {state_dir}`")
            elif StackPaths(state_dir.resolve()).load() is not None:
                embedded.down(state_dir, say=say)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return code


def demo_cmd(
    members: int = typer.Option(200, "--members", min=1, help="Members per simulator round."),
    days: int = typer.Option(30, "--days", min=1, help="Days of history per round (ending now)."),
    rate: float = typer.Option(200.0, "--rate", min=1.0, help="Source rows/s over all sources."),
    state_dir: Path | None = typer.Option(
        None,
        "--state-dir",
        help="State directory of the embedded stack (default: $LOYALTY_CDP_STATE_DIR or"
        " ./.loyalty-cdp).",
    ),
    keep_running: bool = typer.Option(
        False, "--keep-running", help="Leave the stack up on exit (stop it with `down`)."
    ),
    duration: float | None = typer.Option(
        None, "--duration", min=1.0, help="Exit after this many seconds of traffic."
    ),
) -> None:
    """Everything embedded, live synthetic traffic and a live view; Ctrl-C stops it all."""
    sd = (state_dir or settings().state_dir).resolve()
    code = run_demo(
        sd,
        members=members,
        days=days,
        rate=rate,
        duration=duration,
        keep_running=keep_running,
        console=Console(soft_wrap=True),
    )
    if code:
        raise typer.Exit(code)


def register(main_app: typer.Typer) -> None:
    """Mount ``demo`` on the main CLI."""
    main_app.command("demo")(demo_cmd)

"""Where the CLI finds its configuration and state, overridable from the environment.

Every path defaults to the files shipped in the repository (so a fresh clone works with no
configuration at all); a data engineer points ``LOYALTY_CDP_*`` variables at their own YAML.
Secrets never live here: they come from the environment of the process that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.stack.errors import StackError

REPO_ROOT = Path(__file__).resolve().parents[1]

_S = TypeVar("_S", bound=BaseSettings)


class Settings(BaseSettings):
    """Paths of the stack's state and of the YAML configuration."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_CDP_", extra="ignore")

    state_dir: Path = Path(".loyalty-cdp")
    connectors_dir: Path = REPO_ROOT / "connectors"
    mappings_dir: Path = REPO_ROOT / "connectors" / "mappings"
    topics_file: Path = REPO_ROOT / "config" / "topics.yaml"
    program_file: Path = REPO_ROOT / "config" / "program.yaml"
    #: How often the embedded Debezium engines persist offsets. Shorter = fewer redeliveries
    #: after a crash (redeliveries are harmless: canonical ids are deterministic).
    offset_flush_interval_ms: int = Field(1000, ge=1)
    #: How long each embedded Debezium engine waits for changes before it hands a partial
    #: batch on. Every wait is a wake-up of the engine's task thread: at 20 ms the three
    #: idle engines took 21-26% of a core on the 2-core host (1.4 ms of JVM CPU per poll);
    #: at 100 ms 5%. Under load a change waits at most this long for its batch (50 ms on
    #: average), a small price for a core's fifth that the stream stages get instead.
    cdc_poll_interval_ms: int = Field(100, ge=1, le=60_000)
    #: Extra options of the CDC runner's JVM (space-separated), after its own ``-Xrs``, log
    #: configuration and ``-Xmx1g``. The default keeps the JIT at its first tier (C1): on a
    #: 2-core host the C2 compiler took ~3 of every 4 CPU-seconds of the CDC runner for
    #: minutes after a start (0.3 ms of C2 per row at 1,000 rows/s after a 5 s warm-up),
    #: while C1 code keeps up with far more than the pipeline carries. ``""`` = the JVM's
    #: defaults (full tiered compilation).
    cdc_jvm_opts: str = "-XX:TieredStopAtLevel=1"


class WorkerTuning(BaseSettings):
    """The stream worker's tuning (``LOYALTY_CDP_*``), read when the worker builds its app.

    ``up`` and the worker read them before anything starts, so a bad value is one line
    naming the variable, not a traceback in a worker log. Figures behind the defaults are in
    the README (Benchmarks) and the docstrings of the modules that use them.
    """

    model_config = SettingsConfigDict(env_prefix="LOYALTY_CDP_", extra="ignore")

    #: Member states kept hot per worker; the least recently used beyond this are compacted
    #: to their stored form (~1.5 KB) and restored on their next use (streams/profiles.py).
    hot_states: int = Field(5000, ge=1)
    #: Compacted states kept per worker beyond the hot ones; the least recently compacted
    #: beyond this are dropped and read from the store again on their next use, so memory
    #: does not grow with the number of members (streams/profiles.py).
    cold_states: int = Field(50_000, ge=0)
    #: Purchase nodes the identity stage's graph keeps, the most recent (streams/identity.py):
    #: a forgotten purchase is looked up in the store when a record names it again. About
    #: 170 bytes each while kept; unbounded they were ~6.7 KB of a 50-purchase member.
    purchase_nodes: int = Field(100_000, ge=0)
    #: Profiles per profile-stage transaction: a batch is folded, written and published in
    #: chunks of this many, so its working set is one chunk's (streams/profiles.py).
    profile_chunk: int = Field(250, ge=1)
    #: Messages a stage takes per batch (streams/stages.py).
    stage_batch: int = Field(5000, ge=1, le=100_000)
    #: How long an idle stage lingers after its first message to batch more with it (a busy
    #: stage hands on what arrived during its last batch at once; streams/faust_patches.py).
    #: 20 ms since session 6 (was 200): at 500 rows/s commit -> loyalty event went from
    #: p50 807 / p99 1,377 ms to 412 / 850 ms; a burst's throughput fell ~13% (smaller
    #: first batches downstream), docs/benchmarks-history.md (session 6).
    batch_within_ms: int = Field(20, ge=1, le=60_000)
    #: Messages an agent's stream queues ahead of its take buffer (streams/app.py).
    stream_buffer: int = Field(4096, ge=64, le=1_000_000)
    #: RSS growth after which the worker returns free C-heap memory (streams/malloc_trim.py);
    #: 0 = off.
    malloc_trim_mb: int = Field(16, ge=0)
    #: The consumers' fetch wait (streams/faust_patches.py).
    fetch_max_wait_ms: int = Field(20, ge=1, le=10_000)
    #: The decisioning process's own consumer's fetch wait (streams/decision_process.py):
    #: offers may wait this long for a quiet partition; a longer wait costs the broker
    #: fewer idle fetches (Tansu scans every partition of a fetch).
    decisions_fetch_wait_ms: int = Field(100, ge=1, le=10_000)
    #: False restores Faust's own per-message delivery (streams/faust_patches.py).
    faust_batched_drain: bool = True
    #: Run the profile stage in a child process of the worker (streams/profile_process.py);
    #: False runs it on a thread of the worker, sharing its GIL (the design before session 6).
    profile_process: bool = True
    #: Loopback port of the Faust web server behind the worker's API process (0: a free one).
    internal_web_port: int = Field(0, ge=0, le=65_535)


def _load(cls: type[_S]) -> _S:
    try:
        return cls()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "LOYALTY_CDP_" + "_".join(str(p) for p in err["loc"]).upper()
        raise StackError(f"{name}: {err['msg']}") from None


def settings() -> Settings:
    """The settings from the environment; a bad ``LOYALTY_CDP_*`` value is a one-line
    :class:`StackError` naming the variable (the CLI prints it and exits 1)."""
    return _load(Settings)


def worker_tuning() -> WorkerTuning:
    """The worker's tuning from the environment (errors as :func:`settings`)."""
    return _load(WorkerTuning)

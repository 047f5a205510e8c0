"""The embedded stack's state directory: layout and the persisted ``stack.json``.

Ports are chosen once (free ports at the first ``up``) and then kept, so DSNs and the broker
address a data engineer copied stay valid across ``down``/``up``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from app.stack.process import ManagedProcess

__all__ = ["StackPaths", "StackState"]


@dataclass
class StackState:
    pg_port: int
    broker_port: int
    api_port: int
    clock: str = "wall"  # "wall" or "manual"

    @property
    def broker(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def cdc_dir(self) -> Path:
        return self.root / "cdc"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def process(self, name: str) -> ManagedProcess:
        return ManagedProcess(name, self.run, self.logs)

    def load(self) -> StackState | None:
        try:
            return StackState(**orjson.loads(self.state_file.read_bytes()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, state: StackState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(asdict(state), option=orjson.OPT_INDENT_2))
        tmp.replace(self.state_file)

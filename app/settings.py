"""Where the CLI finds its configuration and state, overridable from the environment.

Every path defaults to the files shipped in the repository (so a fresh clone works with no
configuration at all); a data engineer points ``LOYALTY_CDP_*`` variables at their own YAML.
Secrets never live here: they come from the environment of the process that needs them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    offset_flush_interval_ms: int = 1000


def settings() -> Settings:
    return Settings()

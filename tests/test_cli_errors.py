"""User errors of the real ``loyalty-cdp`` entry point: one line on stderr, a non-zero exit,
never a traceback, and quickly (nothing is started, nothing waits for long).

The command runs as a subprocess (``python -m app.cli``, the same ``main()`` as the console
script) so the test sees exactly what a user sees. Nothing here needs Java, a broker or a
running PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import REPO_ROOT

CLI_TIMEOUT_S = 90  # a hang fails the test; user errors return within seconds


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_CDP_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environ,
        stdin=stdin,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    """Assert the user-error contract and return the line."""
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound then released, never listened on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bad_connectors(tmp_path: Path) -> Path:
    d = tmp_path / "connectors"
    d.mkdir()
    (d / "pos.yaml").write_text("name: pos\ndatabase: pos\ntables: [transactions\n")
    return d


def test_status_without_a_stack(tmp_path: Path) -> None:
    line = one_line_error(run_cli("status", "--state-dir", str(tmp_path / "none")))
    assert "no stack" in line and "loyalty-cdp up" in line


def test_status_json_without_a_stack(tmp_path: Path) -> None:
    res = run_cli("status", "--json", "--state-dir", str(tmp_path / "none"))
    one_line_error(res)
    assert res.stdout == ""


def test_down_without_a_stack(tmp_path: Path) -> None:
    assert "no stack" in one_line_error(run_cli("down", "--state-dir", str(tmp_path / "none")))


def test_up_on_a_taken_port_fails_fast_and_starts_nothing(
    tmp_path: Path, listening_port: int
) -> None:
    state = tmp_path / "state"
    res = run_cli("up", "--state-dir", str(state), "--pg-port", str(listening_port))
    line = one_line_error(res)
    assert str(listening_port) in line and "--pg-port" in line
    # nothing was started or remembered: the stack still does not exist
    assert not (state / "postgres").exists()
    assert "no stack" in one_line_error(run_cli("status", "--state-dir", str(state)))


@pytest.mark.parametrize("flag", ["--broker-port", "--api-port"])
def test_up_on_other_taken_ports(tmp_path: Path, listening_port: int, flag: str) -> None:
    res = run_cli("up", "--state-dir", str(tmp_path / "state"), flag, str(listening_port))
    line = one_line_error(res)
    assert str(listening_port) in line and flag in line
    assert not (tmp_path / "state" / "postgres").exists()


def test_up_with_equal_ports(tmp_path: Path, closed_port: int) -> None:
    port = str(closed_port)
    res = run_cli("up", "--state-dir", str(tmp_path / "s"), "--pg-port", port, "--api-port", port)
    assert "must differ" in one_line_error(res)


def test_up_with_a_bad_clock(tmp_path: Path) -> None:
    line = one_line_error(run_cli("up", "--state-dir", str(tmp_path / "s"), "--clock", "x"))
    assert "--clock" in line


@pytest.mark.parametrize("value", ["fast", "-1", "20"])
def test_up_with_a_bad_stream_nice_starts_nothing(tmp_path: Path, value: str) -> None:
    state = tmp_path / "s"
    res = run_cli("up", "--state-dir", str(state), env={"LOYALTY_CDP_STREAM_NICE": value})
    assert "LOYALTY_CDP_STREAM_NICE" in one_line_error(res)
    assert not (state / "postgres").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOYALTY_CDP_CDC_POLL_INTERVAL_MS", "0"),
        ("LOYALTY_CDP_OFFSET_FLUSH_INTERVAL_MS", "soon"),
        ("LOYALTY_CDP_DECISIONS_NICE", "20"),
        ("LOYALTY_CDP_PROFILE_CHUNK", "0"),
        ("LOYALTY_CDP_STAGE_BATCH", "many"),
        ("LOYALTY_CDP_FAUST_BATCHED_DRAIN", "maybe"),
    ],
)
def test_up_with_a_bad_setting_starts_nothing(tmp_path: Path, name: str, value: str) -> None:
    state = tmp_path / "s"
    res = run_cli("up", "--state-dir", str(state), env={name: value})
    assert name in one_line_error(res)
    assert not (state / "postgres").exists()


def test_topics_apply_without_a_stack(tmp_path: Path) -> None:
    line = one_line_error(run_cli("topics", "apply", "--state-dir", str(tmp_path / "none")))
    assert "no embedded stack" in line and "--bootstrap" in line


def test_connectors_render_bogus_target() -> None:
    line = one_line_error(run_cli("connectors", "render", "--target", "bogus"))
    assert "--target" in line and "connect" in line and "embedded" in line


def test_bad_connector_yaml(bad_connectors: Path) -> None:
    env = {"LOYALTY_CDP_CONNECTORS_DIR": str(bad_connectors)}
    line = one_line_error(run_cli("connectors", "render", env=env))
    assert "pos.yaml" in line and "not valid YAML" in line


def test_invalid_connector_field(tmp_path: Path) -> None:
    (tmp_path / "pos.yaml").write_text("name: pos\ndatabase: pos\ntables: []\n")
    env = {"LOYALTY_CDP_CONNECTORS_DIR": str(tmp_path)}
    line = one_line_error(run_cli("connectors", "render", "--target", "embedded", env=env))
    assert "pos.yaml" in line and "tables" in line


def test_up_with_bad_connector_yaml_starts_nothing(tmp_path: Path, bad_connectors: Path) -> None:
    state = tmp_path / "state"
    env = {"LOYALTY_CDP_CONNECTORS_DIR": str(bad_connectors)}
    line = one_line_error(run_cli("up", "--state-dir", str(state), env=env))
    assert "pos.yaml" in line
    assert not (state / "postgres").exists()


def test_connectors_apply_unreachable(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    line = one_line_error(run_cli("connectors", "apply", "--connect-url", url))
    assert "unreachable" in line and url in line


def test_connectors_apply_needs_a_url() -> None:
    assert "--connect-url" in one_line_error(run_cli("connectors", "apply"))


def test_unknown_command() -> None:
    assert "nope" in one_line_error(run_cli("nope"))


def test_help_is_not_an_error() -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    assert "Usage" in res.stdout
    assert res.stderr == ""

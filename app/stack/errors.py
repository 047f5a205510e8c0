"""The one error type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class StackError(RuntimeError):
    """A user-facing failure of the embedded stack (taken port, missing Java, bad config)."""

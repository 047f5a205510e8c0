"""Benchmarks printed by ``loyalty-cdp bench ...`` (figures, never timed asserts)."""

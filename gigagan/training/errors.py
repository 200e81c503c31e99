"""The trainer's errors: each names what went wrong and what to do, for the CLI to print in one line."""
from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A TrainConfig field out of range; .field names it (the CLI turns it into the flag's name)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"TrainConfig.{field} {message}")
        self.field, self.message = field, message


class ConfigChangeError(ValueError):
    """A resume whose settings change what the saved state means (batch size, seed, data, losses, ...): refused
    (a usage error, exit 2) unless --allow-config-change. .changes lists (field, old, new)."""

    def __init__(self, message: str, changes: list):
        super().__init__(message)
        self.changes = changes


class TrainingError(RuntimeError):
    """Training cannot go on: non-finite steps in a row, no usable data, a rank without data."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt, or from another model or run."""


class Preempted(Exception):
    """A second stop signal arrived: training stops at once (after a checkpoint write already in flight)."""

    def __init__(self, signum):
        super().__init__(f"stopped by a second {signal_name(signum)}")
        self.signum = signum


def signal_name(signum) -> str:
    try:
        return signal.Signals(signum).name
    except (ValueError, TypeError):
        return str(signum)

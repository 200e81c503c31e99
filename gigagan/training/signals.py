"""Stop signals. SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C) asks the loop for a checkpoint and a stop
at the next step; a second one stops at once, after the checkpoint write in flight if there is one. Once the
final checkpoint is whole, only outputs are left, and any signal stops them at once (finishing)."""
from __future__ import annotations

import contextlib
import signal

from .errors import Preempted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """What the handlers have seen. `received` is the first signal's number, or "peer" once another rank got
    one; the loop reads it once a step, on every rank together, so that all ranks stop at the same step."""

    def __init__(self):
        self.received = None
        self._writing, self._pending = False, None      # a second signal waits for a checkpoint write
        self._finishing = False

    def _handle(self, signum, frame) -> None:
        if self._finishing:
            raise Preempted(signum)
        if self.received is None:
            self.received = signum
        elif self._writing:
            self._pending = signum
        else:
            raise Preempted(signum)

    @contextlib.contextmanager
    def caught(self):
        """The handlers installed for the body; the previous ones come back after it."""
        previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def deferred(self):
        """Around a checkpoint write: a second signal in the body stops training only once the body is done, so
        the write is never cut short."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._pending is not None:
            raise Preempted(self._pending)

    @contextlib.contextmanager
    def finishing(self):
        """After the final checkpoint: a signal, or one that came during that checkpoint's write, stops the body
        (the final outputs) at once with Preempted; nothing is left to save."""
        if isinstance(self.received, int):
            raise Preempted(self.received)
        self._finishing = True
        try:
            yield
        finally:
            self._finishing = False

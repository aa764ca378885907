"""Stop a training loop cleanly on Ctrl-C (SIGINT) or SIGTERM (what schedulers and `kill` send).

The first signal only sets `requested`; the loop checks it at a safe point (after a whole optimizer
step or PPO iteration), writes its checkpoint and stops, so the checkpoint never holds a half-applied
update. A second signal raises KeyboardInterrupt at once (the last periodic checkpoint stays).
Handlers can only be installed from the main thread; elsewhere this does nothing.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    def __init__(self) -> None:
        self.requested: str | None = None  # the name of the signal that asked to stop
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(
            f"\n{self.requested}: stopping after the current step (send it again to stop at once)", flush=True
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

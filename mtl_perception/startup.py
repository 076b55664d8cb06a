"""Entry point of ``mtl-perception-node``: SIGINT/SIGTERM handling installed before any heavy import.

Importing rclpy, torch and the model takes seconds. A Ctrl-C or a launch shutdown (SIGTERM) in that
window used to end in a ``KeyboardInterrupt`` traceback inside ``import torch``, an ``RCLError:
context is invalid`` from ``create_subscription``, or a -15 exit. This module imports only the
standard library, installs the handlers, and only then imports the node: a signal at any moment of
start-up ends the process with exit 0 and one line. Once the node is ready, rclpy's own handlers
(which chain to these) stop the executor as before.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartupInterrupted(BaseException):
    """Raised by the handler while starting; a BaseException so no ``except Exception`` eats it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_state: dict[str, object] = {"installed": False, "starting": True, "signal": None}


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    first = _state["signal"] is None
    _state["signal"] = signum
    if _state["starting"] and first:
        # Only the first signal interrupts: a second one during clean-up must not break it.
        raise StartupInterrupted(signum)


def install() -> None:
    """Install the handlers once (idempotent; the console script does it before importing rclpy)."""
    if not _state["installed"]:
        for s in SIGNALS:
            signal.signal(s, _on_signal)
        _state["installed"] = True


def signalled() -> int | None:
    """The signal received so far, if any."""
    return _state["signal"]  # type: ignore[return-value]


def started() -> None:
    """Start-up is over: from now on a signal only records itself (rclpy's handler stops spinning)."""
    _state["starting"] = False


def interrupted_exit(prog: str) -> int:
    sig = signalled()
    name = signal.Signals(sig).name if sig else "signal"
    print(f"{prog}: {name} during start-up, exiting", file=sys.stderr)
    return 0


def main(args: list[str] | None = None) -> int:
    """Console script ``mtl-perception-node``."""
    install()
    try:
        from .node_main import main as node_main
    except StartupInterrupted:
        return interrupted_exit("mtl-perception-node")
    return node_main(args)


if __name__ == "__main__":
    sys.exit(main())

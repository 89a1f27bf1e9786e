"""What runs first in each part that ``twofa up`` supervises; imports nothing heavy.

``python -m twofa.supervised PID COMMAND...`` arms the parent-death signal and execs COMMAND;
``python -m twofa.supervised PID --relay`` is the event listener that lets supervisord print each
part's output with its name (``twofa.devstack.relay_output`` does the printing).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Killed when the parent process dies, even by SIGKILL, which it cannot clean up after.

    A normal stop never needs it (the supervisor sends SIGTERM and waits); SIGKILL, unlike
    SIGTERM, cannot be caught by a child (Streamlit) that would then hang on its closed pipe.
    The signal survives exec, so the part itself carries it.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def relay() -> None:
    """Acknowledge every event at once: supervisord's result handler prints what it carries."""
    from supervisor.childutils import listener

    while True:
        listener.wait(sys.stdin, sys.stdout)
        listener.ok(sys.stdout)


def main(argv: list[str]) -> None:
    """Arm the parent-death signal, give up if the supervisor died first, then become the part."""
    supervisor = int(argv[0])
    die_with_parent()
    if os.getppid() != supervisor:  # it died between our fork and the prctl: no signal comes
        sys.exit(1)
    if argv[1:] == ["--relay"]:
        relay()
    else:
        os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])

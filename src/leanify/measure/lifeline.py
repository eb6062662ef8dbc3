"""Child processes die with leanify: a `kill -9` of the main process leaves nothing behind.

On Linux the kernel sends a child SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`);
the parent may have died before the call, so the child then checks that its parent is still
the process that started it. Elsewhere the child only notices when its pipes close.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PARENT_ENV = "LEANIFY_PARENT_PID"  # the pid a child was started by
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Call first thing in a child: ask for SIGKILL at the parent's death, close the race,
    and ignore Ctrl-C (the parent decides, and kills its children itself)."""
    if parent is None:
        text = os.environ.get(PARENT_ENV, "")
        parent = int(text) if text.isdigit() else None
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:  # died before the prctl: follow it
        os._exit(1)

"""The server's CPU time slice (Linux's EEVDF scheduler, kernel 6.12+).

EXPERIMENT (reverted in the next commit): a shorter slice lets the server run
first when a request wakes it on a core another process holds.
"""

from __future__ import annotations

import ctypes
import os
import struct

_ATTR = struct.Struct("IIQiIQQQII")


def set_slice_us(us: int) -> None:
    attr = _ATTR.pack(_ATTR.size, os.sched_getscheduler(0), 0, os.getpriority(os.PRIO_PROCESS, 0), 0,
                      us * 1000, 0, 0, 0, 0)
    if ctypes.CDLL(None, use_errno=True).syscall(314, 0, ctypes.c_char_p(attr), 0) != 0:
        raise OSError(ctypes.get_errno(), "sched_setattr")

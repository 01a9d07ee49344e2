"""Task ids chosen by the client: version 7 UUIDs that keep to the clock."""

from __future__ import annotations

import secrets
import threading
import time
from uuid import UUID

# The usual version 7 generators (uuid6's among them) take the next
# millisecond whenever two ids fall in the same one, so above 1,000 ids a
# second they run ahead of the clock, and so do the creation times the server
# reads off them. This one is RFC 9562's method 3 instead: 12 bits of the
# fraction of the millisecond, and a step of 244 ns when two ids collide.
# The server makes its own ids the same way (its core imports nothing of
# this package, which pulls in grpc).
_lock = threading.Lock()
_last = 0


def new_task_id() -> UUID:
    """Returns a new version 7 task id, greater than any this process made before.

    Safe to call from several threads: the ids of a process never repeat and
    always increase.
    """
    global _last
    ns = time.time_ns()
    stamp = (ns // 1_000_000) << 12 | (ns % 1_000_000) * 4096 // 1_000_000
    with _lock:
        stamp = max(stamp, _last + 1)
        _last = stamp
    value = (stamp >> 12) << 80 | 0x7 << 76 | (stamp & 0xFFF) << 64 | 0b10 << 62
    return UUID(int=value | secrets.randbits(62))

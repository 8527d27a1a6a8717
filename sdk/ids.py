"""ULIDs: 128-bit ids that sort by creation time, as Inngest uses for runs and events."""

from __future__ import annotations

import os
import time

#: Crockford's base32 alphabet, as ULIDs are written.
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now_ms: int | None = None) -> str:
    """A ULID string (26 Crockford base32 chars): 48 bits of milliseconds, 80 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))

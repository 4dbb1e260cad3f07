"""The integer a message key is indexed by.

`usage_keys` is looked up by message key, and message ids are random: an index on the key's
text (57 bytes a key) takes every insert to a random page of an index that outgrows the
page cache at a few thousand sessions. The rows are stored in arrival order instead and found
through an index of this 8-byte digest, four times smaller. Every lookup also compares the
key itself, so a collision costs a row read, never a wrong answer.
"""

from __future__ import annotations

import hashlib


def key_hash(key: str) -> int:
    """A signed 64-bit digest of a message key (SQLite's INTEGER range)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)

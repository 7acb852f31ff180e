"""Concurrency slots of one replica, shared by direct calls and stream pulls.

The limit moves: the replica sets it from its learned concurrency limit."""

from __future__ import annotations

import asyncio


class Slots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.in_use = 0
        self._changed = asyncio.Event()

    def free(self) -> int:
        return max(0, self.limit - self.in_use)

    def set_limit(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        grew = limit > self.limit
        self.limit = limit
        if grew:
            self._changed.set()  # a puller waiting for room has some now

    def acquire(self) -> None:
        """Take a slot without waiting (the caller checked there was one)."""
        self.in_use += 1

    def try_acquire(self) -> bool:
        """Take a slot if one is free (direct calls: over the limit they are refused)."""
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1
        self._changed.set()

    async def wait_free(self, timeout_s: float) -> bool:
        if self.free() > 0:
            return True
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return self.free() > 0

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight (used when draining); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_use > 0:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True

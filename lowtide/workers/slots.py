"""Concurrency slots of one replica, shared by direct calls and stream pulls.

The limit moves: the replica sets it from its learned concurrency limit.

A direct call that finds every slot taken may wait for one, briefly and first come first
served (`acquire_within`): a freed slot is handed to the oldest such call at once (it never
shows as free to the stream pullers meanwhile). The activator keeps one call more than the
limit in flight on a replica (it sees the slot free only when the answer arrives, and the
next call then takes a round trip to arrive: without a call waiting here the slot idles for
that long), and several activators sharing a replica may briefly send more than their
share; past the wait the call is refused as busy, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Slots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.in_use = 0
        self._changed = asyncio.Event()
        self._held: deque[asyncio.Future[bool]] = deque()  # direct calls waiting, in order

    def free(self) -> int:
        return max(0, self.limit - self.in_use)

    def held(self) -> int:
        """Direct calls waiting here for a slot."""
        return len(self._held)

    def set_limit(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        grew = limit > self.limit
        self.limit = limit
        if grew:
            self._hand_over()
            if self.free() > 0:
                self._changed.set()  # a puller waiting for room has some now

    def acquire(self) -> None:
        """Take a slot without waiting (the caller checked there was one)."""
        self.in_use += 1

    def try_acquire(self) -> bool:
        """Take a slot if one is free and no direct call waits for one."""
        if self._held:
            self._hand_over()  # the ones waiting first
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    async def acquire_within(self, timeout_s: float) -> bool:
        """Take a slot, waiting up to `timeout_s` behind the direct calls already waiting;
        False when none came (nothing was taken)."""
        if self.try_acquire():
            return True
        if timeout_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._held.append(fut)
        timer = loop.call_later(timeout_s, _expire, fut)
        try:
            taken = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.release()  # handed a slot just as the caller went away: pass it on
            else:
                self._discard(fut)
            raise
        finally:
            timer.cancel()
        if not taken:
            self._discard(fut)
        return taken

    def release(self) -> None:
        self.in_use -= 1
        self._hand_over()
        if self.free() > 0:
            self._changed.set()

    def _hand_over(self) -> None:
        """Give free slots to the direct calls waiting, oldest first (taken for them)."""
        while self._held and self.in_use < self.limit:
            fut = self._held.popleft()
            if fut.done():
                continue
            self.in_use += 1
            fut.set_result(True)

    def _discard(self, fut: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):
            self._held.remove(fut)

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


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)

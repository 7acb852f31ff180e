"""What of a replica's output reaches `lowtide logs`, and how its end is told.

BentoML prints its own life-cycle chatter (startup and clean-up hooks, "cleanup finalized")
and, when the startup hook fails, the same traceback twice plus "Application startup
failed" twice. A user reading their function's logs needs none of that: `LogFilter` drops
the chatter and repeated traceback blocks and passes everything else (the function's own
output, warnings, errors) unchanged. `exit_line` words a replica's end: a replica whose
function could not be loaded says so instead of "exited with code 0" (`bentoml serve`
exits 0 when its worker asks it to stop).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# "2026-12-01T12:35:39+0000 [INFO] [entry_service:lowtide-worker:1] Running cleanup hook: _stop"
_BENTO = re.compile(r"^\S+ \[(?P<level>[A-Z]+)\] \[[^\]]+\] (?P<msg>.*)$")
_CHATTER = (
    re.compile(r"^Running (startup|cleanup) hook: "),
    re.compile(r"^Completed (async )?(startup|cleanup) hook: "),
    re.compile(r"^Service instance cleanup finalized"),
    re.compile(r"^Service [\w.-]+ initialized"),
    re.compile(r"^Application startup failed\. Exiting\."),
)
# what the replica prints when its function cannot be loaded (service.py / replica.py)
LOAD_FAILED_MARKERS = ("[lowtide] the function cannot be loaded",
                       "[lowtide] the replica cannot start")


def is_chatter(line: str) -> bool:
    m = _BENTO.match(line)
    return m is not None and any(p.match(m["msg"]) for p in _CHATTER)


class LogFilter:
    """Feed lines in order; get back the lines to keep. A BentoML "Traceback" block is held
    until it ends (a blank line) and dropped when it repeats the previous block."""

    def __init__(self) -> None:
        self._block: list[str] | None = None
        self._last_block: list[str] = []

    def feed(self, line: str) -> list[str]:
        if self._block is not None:
            if line.strip():
                self._block.append(line)
                return []
            return self._end_block()
        if is_chatter(line):
            return []
        m = _BENTO.match(line)
        if m is not None and m["level"] == "ERROR" and m["msg"].startswith("Traceback"):
            self._block = [line]
            return []
        return [line]

    def flush(self) -> list[str]:
        """At the end of the output: what a block still held."""
        return self._end_block() if self._block is not None else []

    def _end_block(self) -> list[str]:
        block, self._block = self._block or [], None
        body = [_message(line) for line in block]
        if body == self._last_block:
            return []
        self._last_block = body
        return block


def _message(line: str) -> str:
    m = _BENTO.match(line)
    return m["msg"] if m is not None else line


def load_failed(lines: Iterable[str]) -> bool:
    return any(line.startswith(LOAD_FAILED_MARKERS) for line in lines)


def exit_line(returncode: int | None, function_failed_to_load: bool) -> str:
    """The line `lowtide logs` gets when a replica ends without being asked to."""
    if function_failed_to_load:
        return "[lowtide] replica stopped: its function could not be loaded (reason above)"
    return f"[lowtide] replica exited unexpectedly with code {returncode}"

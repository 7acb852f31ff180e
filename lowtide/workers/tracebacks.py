"""The remote traceback of a function that raised: in the 500 answer, and in the replica's
output (so `lowtide logs` shows it).

Only the user's frames are kept (the replica's own runner and the thread pool are noise to
the caller), and the text is bounded: a deep recursion or a huge message must not turn an
error answer into megabytes. When cut, the head (outermost frames) and the tail (the frames
nearest the error and the exception line, what a reader needs most) are kept.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

from . import user_env

MAX_TRACEBACK_CHARS = 8000
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))  # lowtide/workers: the runner's frames
_STDLIB_PLUMBING = ("concurrent" + os.sep + "futures", "asyncio" + os.sep)
_hidden: tuple[str, ...] = ()  # the replica's secret values: never in an answer or its logs


def hide(values: tuple[str, ...]) -> None:
    """Redact these values (the replica's secrets) from every traceback and message."""
    global _hidden
    _hidden = values


def redact(text: str) -> str:
    return user_env.redact(text, _hidden)


def _is_plumbing(filename: str) -> bool:
    return filename.startswith(_OWN_DIR) or any(p in filename for p in _STDLIB_PLUMBING)


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame that is not the replica's own plumbing."""
    while tb is not None and _is_plumbing(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def bound_text(text: str, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """`text` itself when within `limit` characters, else its head and tail around a mark."""
    if len(text) <= limit:
        return text
    mark = f"\n  ... {len(text) - limit} characters cut ...\n"
    head = (limit - len(mark)) // 3
    tail = limit - len(mark) - head
    return text[:head] + mark + text[-tail:]


def format_remote(exc: BaseException, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """The traceback of `exc` as Python prints it, from the user's first frame on, with
    chained causes, bounded to `limit` characters."""
    original = exc.__traceback__
    try:
        exc.__traceback__ = _user_frames(original) or original
        text = "".join(traceback.format_exception(exc))
    except Exception:  # a broken __str__ of the exception, say: say what we can
        text = f"{type(exc).__name__} (its traceback could not be formatted)\n"
    finally:
        exc.__traceback__ = original
    return bound_text(redact(text.rstrip("\n")), limit)


def log_remote(text: str, request_id: str = "") -> None:
    """Print the traceback to the replica's output, which the agent captures for
    `lowtide logs`."""
    what = f"request {request_id}" if request_id else "a call"
    print(f"[lowtide] {what} raised:\n{text}", file=sys.stderr, flush=True)

"""An endpoint whose replicas cannot start, as the platform records it and the activators
answer it: the reason, the number of failed starts and the next try.

The platform's scaler writes a `Failing` in the deployment's hash (field `failing`) when a
start of the current version fails (an import error, a package missing on the workers, a
requirement pip cannot install, a constructor that raised) or when no live host could ever
place a replica (e.g. `gpu=1` and no GPU host). Until `until` the activators answer new calls
of that version at once with a 503 carrying the reason, instead of queueing them behind a
start that will not come; the platform answers the calls already queued the same way. A
redeploy (a new version) or a ready replica ends it; past `until` calls queue again and
wake the next try.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from ._protocol import Result, error_result

START, PLACEMENT = "start", "placement"


@dataclass(frozen=True)
class Failing:
    kind: str  # START or PLACEMENT
    reason: str  # "ModuleNotFoundError: No module named 'tabulate'"
    version: int  # the deployment version that fails
    failures: int  # consecutive failed starts of that version (0 for PLACEMENT)
    until: float  # seconds since the epoch: the next try (calls are answered at once until)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Failing | None:
        """None for nothing, or for something unreadable (then calls just queue)."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["kind"]), str(data["reason"]), int(data["version"]),
                       int(data["failures"]), float(data["until"]))
        except (ValueError, KeyError, TypeError):
            return None

    def active(self, version: int, now: float) -> bool:
        return self.version == version and now < self.until

    def retry_in_s(self, now: float) -> float:
        return max(0.0, self.until - now)

    def summary(self, now: float) -> str:
        """'3 failed starts; next try in 40 s' (status, events, answers)."""
        if self.kind == PLACEMENT:
            return "no live host can ever place a replica; checked again as hosts change"
        plural = "s" if self.failures != 1 else ""
        return (f"{self.failures} failed start{plural}; next try in "
                f"{math.ceil(self.retry_in_s(now)):.0f} s, or at once after a redeploy")

    def result(self, name: str, now: float) -> Result:
        """The 503 a caller gets: the reason first, then what happens next."""
        if self.kind == PLACEMENT:
            return error_result(503, "cannot be placed", f"{name!r} cannot be placed: "
                                f"{self.reason}", reason=self.reason, retry_in_s=None)
        return error_result(503, "startup failed", f"{name!r} cannot start: {self.reason} "
                            f"({self.summary(now)}; `lowtide logs {name}` has the traceback)",
                            reason=self.reason, failures=self.failures,
                            retry_in_s=round(self.retry_in_s(now), 1))

    def retry_after_header(self, now: float) -> str:
        return str(max(1, math.ceil(self.retry_in_s(now))))


def start_backoff_s(failures: int, first_s: float, cap_s: float = 300.0) -> float:
    """The wait before the next start after `failures` consecutive failed ones: first_s,
    doubling, at most cap_s."""
    return min(cap_s, first_s * 2 ** max(0, failures - 1))

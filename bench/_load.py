"""Load generators for the benchmarks, each in its own process (never the benchmark's).

- `wrk_closed(url, body, concurrency, duration_s)`: wrk (Debian's `wrk`), `concurrency`
  connections each sending the next request when the last is answered; throughput and
  wrk's own p50/p99.
- `wrk_paced(url, body, rate, duration_s)`: wrk at a fixed rate (a Lua schedule of send
  times): an open-loop generator that costs the 2-core machine little, so the servers
  measured get the cores (a Python generator at these rates took most of a core).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoadResult:
    n: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


# ---- wrk ------------------------------------------------------------------------------
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> LoadResult:
    pct = dict(re.findall(r"^\s*(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    if "50" not in pct or "99" not in pct:
        raise RuntimeError(f"no latency distribution in wrk's output:\n{out}")
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return LoadResult(n, errors, rps, _ms(pct["50"]), _ms(pct["99"]))


def _wrk(url: str, script: str, connections: int, duration_s: float) -> LoadResult:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t", "1", "-c", str(connections), "-d", f"{math.ceil(duration_s)}s",
             "--timeout", "60s", "--latency", "-s", f.name, url],
            capture_output=True, text=True, check=True).stdout
    finally:
        Path(f.name).unlink()
    return parse_wrk(out)


def _post_script(body: dict) -> str:
    return ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(body))}\n")


def wrk_closed(url: str, body: dict, concurrency: int, duration_s: float) -> LoadResult:
    return _wrk(url, _post_script(body), concurrency, duration_s)


# a fixed schedule of send times (LuaJIT's ffi reads the monotonic clock): each request
# takes the next slot and waits for it; a connection is free again when its answer is in
_PACED = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } lt_timespec;
int clock_gettime(int clk_id, lt_timespec *tp);
]]
local ts = ffi.new("lt_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval_ms = %(interval_ms)r
local next_ms = nil
function delay()
  local now = now_ms()
  if next_ms == nil then next_ms = now end
  local wait = next_ms - now
  next_ms = next_ms + interval_ms
  if wait < 0 then return 0 end
  return math.floor(wait + 0.5)
end
"""


def wrk_paced(url: str, body: dict, rate: float, duration_s: float,
              connections: int = 64) -> LoadResult:
    """Requests at a fixed rate (open loop while a connection is free, which with
    `connections` far above rate x latency is always), sent by wrk: a generator that costs
    the 2-core machine little, so the servers measured get the cores. Latency is wrk's, from
    the moment a request is written, in microseconds; send times are rounded to the
    millisecond (wrk's timer), which shifts when a request goes, not what it measures."""
    script = _post_script(body) + _PACED % {"interval_ms": 1000.0 / rate}
    return _wrk(url, script, connections, duration_s)

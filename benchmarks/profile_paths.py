"""Profile kiwi_anyio's publish, consume, task, 1 MiB and RPC paths with cProfile.

::

    python benchmarks/profile_paths.py [--url URL] [--backend asyncio|trio] [--n N]
        [--only publish,consume,tasks,large,rpc_par] [--top 30]

Runs the workloads of ``client_kiwi_anyio.py`` in this process under cProfile (against a
private broker unless ``--url`` is given) and writes, per workload,
``benchmarks/results/profile_<workload>.txt`` (top functions by own time and by cumulative
time) and ``.prof`` (for ``snakeviz``/``pstats``). cProfile inflates the cost of small
functions; read it for where time goes, not for absolute numbers. For a sampling profile
without that distortion use py-spy from ``.venv-bench``::

    .venv-bench/bin/py-spy record -o publish.svg -- \\
        .venv-bench/bin/python benchmarks/client_kiwi_anyio.py publish URL \\
        '{"n": 200000, "inflight": 100}'
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import client_kiwi_anyio as client  # noqa: E402
from bench_common import Meter  # noqa: E402

Runner = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
PROFILES: dict[str, tuple[Runner, dict[str, Any]]] = {
    "publish": (client.publish, {"n": 50_000, "inflight": 100, "size": 100}),
    "consume": (client.consume, {"n": 50_000, "prefetch": 100, "size": 100}),
    "tasks": (client.tasks, {"n": 5_000, "inflight": 100, "prefetch": 100}),
    "large": (client.large, {"n": 200, "size": 1 << 20, "inflight": 8, "prefetch": 10}),
    "rpc_par": (client.rpc_par, {"n": 5_000, "inflight": 64}),
}


def profile(
    name: str, url: str, backend: str, n: int | None, top: int, out: Path
) -> dict[str, Any]:
    fn, params = PROFILES[name]
    params = dict(params)
    if n:
        params["n"] = n
    profiler = cProfile.Profile()

    class ProfilingMeter(Meter):
        """Profiles the measured phase only (not connecting, declaring or pre-filling)."""

        def start(self) -> None:
            super().start()
            profiler.enable()

        def stop(self) -> None:
            profiler.disable()
            super().stop()

    setattr(client, "Meter", ProfilingMeter)  # noqa: B010 - patch the client's global
    try:
        result: dict[str, Any] = anyio.run(fn, url, params, backend=backend)
    finally:
        setattr(client, "Meter", Meter)  # noqa: B010
    out.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(out / f"profile_{name}.prof"))
    text = io.StringIO()
    text.write(f"# {name} on {backend}: {params}\n# result (under cProfile): {result}\n\n")
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs()
    text.write("## by own time\n")
    stats.sort_stats("tottime").print_stats(top)
    text.write("## by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    (out / f"profile_{name}.txt").write_text(text.getvalue())
    return result


def _frame_key(frame: str) -> str:
    """``func (path:line)`` -> ``func (short/path)``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def summarize_folded(path: Path, top: int) -> str:
    """Own and inclusive sample shares per function from py-spy's raw (folded) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_frame_key(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for key in set(frames):
            inclusive[key] += n
    out = [f"{total} samples", "", "## own time"]
    out += [f"{n / total * 100:5.1f}%  {key}" for key, n in own.most_common(top)]
    out += ["", "## inclusive (kiwi_anyio, pamqp, anyio, codecs)"]
    interesting = ("kiwi_anyio", "pamqp", "anyio", "json", "yaml", "uuid", "socket")
    rows = [(k, n) for k, n in inclusive.most_common() if any(s in k for s in interesting)]
    out += [f"{n / total * 100:5.1f}%  {key}" for key, n in rows[: top * 2]]
    return "\n".join(out) + "\n"


def _pythonpath() -> str:
    """This directory, then the caller's ``PYTHONPATH`` (which may name the tree to profile)."""
    return os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)


def py_spy(name: str, url: str, backend: str, n: int | None, top: int, out: Path) -> Path:
    """Sample the client process with py-spy (no cProfile distortion)."""
    _, params = PROFILES[name]
    params = {**params, "backend": backend, "n": (n or params["n"]) * 4}
    exe = Path(sys.executable).with_name("py-spy")
    out.mkdir(parents=True, exist_ok=True)
    folded = out / f"pyspy_{name}.folded"
    cmd = [
        str(exe), "record", "--rate", "500", "--format", "raw", "--output", str(folded), "--",
        sys.executable, str(HERE / "client_kiwi_anyio.py"), name, url, json.dumps(params),
    ]  # fmt: skip
    subprocess.run(
        cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": _pythonpath()}
    )
    summary = out / f"pyspy_{name}.txt"
    summary.write_text(f"# py-spy {name} on {backend}: {params}\n" + summarize_folded(folded, top))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--n", type=int, default=0, help="messages (default per workload)")
    parser.add_argument("--only", default=",".join(PROFILES))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--py-spy", action="store_true", help="also sample with py-spy")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    broker = None
    url = args.url
    if not url:
        from kiwi_anyio.testing.rabbitmq import RabbitMQBroker

        broker = RabbitMQBroker(tls=False)
        broker.start()
        url = broker.url
    try:
        for name in names:
            result = profile(name, url, args.backend, args.n or None, args.top, Path(args.out))
            print(
                f"{name}: {result.get('msgs_per_s', 0):,.0f} msgs/s under cProfile; "
                f"see {Path(args.out) / f'profile_{name}.txt'}",
                flush=True,
            )
            if args.py_spy:
                where = py_spy(name, url, args.backend, args.n or None, args.top, Path(args.out))
                print(f"{name}: py-spy summary in {where}", flush=True)
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run kiwi_anyio's benchmarks side by side with its peers against one private broker.

::

    bash benchmarks/setup.sh                 # once: .venv-bench and .venv-kiwipy
    python benchmarks/run.py [--quick] [--full] [--only WORKLOAD[,WORKLOAD]] [--repeat N]

Starts a throwaway RabbitMQ (:class:`kiwi_anyio.testing.rabbitmq.RabbitMQBroker`), runs every
workload once per client per repeat, each in a fresh subprocess (so
``getrusage(RUSAGE_SELF)`` counts that client's CPU only), interleaving clients between
repeats, and writes ``benchmarks/results/latest.{json,md}`` (and ``latest.png`` when
matplotlib is importable). Nothing here asserts on timings: it measures and reports.

Clients (columns): kiwi_anyio on asyncio, asyncio+uvloop and trio (``.venv-bench``); kiwiPy
0.9's ``RmqThreadCommunicator`` and asyncio ``RmqCommunicator`` (``.venv-kiwipy``, kiwiPy pins
pamqp 3); aio-pika, aiormq and pika (``.venv-bench``). Ratios are kiwi_anyio on asyncio
against each peer, written so that a number above 1 means kiwi_anyio does better.

Codecs: the communicator workloads run every client with its default codec, kiwiPy's YAML
(``--codec yaml``, the default), or all with JSON (``--codec json``). With YAML,
``kiwi_anyio/asyncio+json`` and ``kiwi_anyio/trio+json`` columns run kiwi_anyio with its JSON
codec beside them, and a "default vs default" table compares kiwi_anyio's default with
kiwiPy's default and with kiwi_anyio's JSON codec (issue 14). Every row names its codec.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
BENCH_VENV = ROOT / ".venv-bench"
KIWIPY_VENV = ROOT / ".venv-kiwipy"
RESULT_PREFIX = "RESULT "
BROKER_PID_ENV = "KIWI_BENCH_BROKER_PID"  # bench_common.BROKER_PID_ENV (read by the clients)
# Where the clients import kiwi_anyio from: the working tree, or a snapshot (--rev).
KIWI_SRC: list[Path] = []

SUBJECT = "kiwi_anyio/asyncio"
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Client:
    name: str
    script: str
    venv: Path
    params: dict[str, Any]
    src: Path | None = None  # import kiwi_anyio from here (a --baseline snapshot)


CLIENTS = [
    Client("kiwi_anyio/asyncio", "client_kiwi_anyio.py", BENCH_VENV, {"backend": "asyncio"}),
    Client("kiwi_anyio/uvloop", "client_kiwi_anyio.py", BENCH_VENV, {"backend": "uvloop"}),
    Client("kiwi_anyio/trio", "client_kiwi_anyio.py", BENCH_VENV, {"backend": "trio"}),
    Client("kiwiPy/thread", "client_kiwipy.py", KIWIPY_VENV, {"flavour": "thread"}),
    Client("kiwiPy/asyncio", "client_kiwipy.py", KIWIPY_VENV, {"flavour": "asyncio"}),
    Client("aio-pika", "client_aio_pika.py", BENCH_VENV, {}),
    Client("aiormq", "client_aiormq.py", BENCH_VENV, {}),
    Client("pika", "client_pika.py", BENCH_VENV, {}),
]
#: kiwi_anyio with its JSON codec, beside the default-codec columns (dropped with --codec json)
JSON_CLIENTS = [
    Client(
        "kiwi_anyio/asyncio+json",
        "client_kiwi_anyio.py",
        BENCH_VENV,
        {"backend": "asyncio", "codec": "json"},
    ),
    Client(
        "kiwi_anyio/trio+json",
        "client_kiwi_anyio.py",
        BENCH_VENV,
        {"backend": "trio", "codec": "json"},
    ),
]
CLIENTS.insert(CLIENTS.index(CLIENTS[2]) + 1, JSON_CLIENTS[0])
CLIENTS.insert(CLIENTS.index(JSON_CLIENTS[0]) + 1, JSON_CLIENTS[1])
#: kiwi_anyio with OpenTelemetry (issue 16): the SDK with exporters that drop everything
#: (``+otel``), and the API alone, no SDK (``+otel-api``: the no-op tracer and meter)
OTEL_CLIENTS = [
    Client(
        "kiwi_anyio/asyncio+otel",
        "client_kiwi_anyio.py",
        BENCH_VENV,
        {"backend": "asyncio", "telemetry": "sdk"},
    ),
    Client(
        "kiwi_anyio/asyncio+otel-api",
        "client_kiwi_anyio.py",
        BENCH_VENV,
        {"backend": "asyncio", "telemetry": "api"},
    ),
]
CLIENTS.insert(CLIENTS.index(JSON_CLIENTS[1]) + 1, OTEL_CLIENTS[0])
CLIENTS.insert(CLIENTS.index(OTEL_CLIENTS[0]) + 1, OTEL_CLIENTS[1])
CLIENT_BY_NAME = {c.name: c for c in CLIENTS}
KIWI = ("kiwi_anyio/asyncio", "kiwi_anyio/uvloop", "kiwi_anyio/trio")
KIWI_JSON = tuple(c.name for c in JSON_CLIENTS)
PROTOCOL_PEERS = (*KIWI, "aio-pika", "aiormq", "pika")
KIWI_OTEL = tuple(c.name for c in OTEL_CLIENTS)
COMM_PEERS = (*KIWI, *KIWI_JSON, "kiwiPy/thread", "kiwiPy/asyncio", "aio-pika")
#: the telemetry columns run where the cost per message is smallest (the worst case)
OTEL_PEERS = (*COMM_PEERS, *KIWI_OTEL)
#: Workloads whose bodies go through a communicator's codec (the others send raw bytes).
CODEC_WORKLOADS = ("tasks", "rpc_seq", "rpc_par", "broadcast_1", "broadcast_4", "memory")


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    fmt: str = "{:,.0f}"


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    title: str
    client_workload: str
    params: dict[str, Any]
    quick: dict[str, Any]
    clients: tuple[str, ...]
    metrics: tuple[Metric, ...]
    full: dict[str, Any] = dataclasses.field(default_factory=dict)
    repeats: int | None = None  # None: the --repeat value


THROUGHPUT = Metric("msgs_per_s", "msgs/s", True)
CPU = Metric("cpu_us_per_msg", "client CPU µs/msg", False, "{:,.1f}")
# the broker's beam.smp during the client's measured phase (10 ms tick resolution)
BROKER_CPU = Metric("broker_cpu_us_per_msg", "broker CPU µs/msg", False, "{:,.1f}")
P50 = Metric("p50_ms", "p50 ms", False, "{:,.2f}")
P99 = Metric("p99_ms", "p99 ms", False, "{:,.2f}")

WORKLOADS = [
    Workload(
        "publish_1",
        "confirmed persistent publish, 100 B, 1 in flight",
        "publish",
        {"n": 20_000, "inflight": 1, "size": 100, "budget": 30},
        {"n": 2_000, "budget": 10},
        PROTOCOL_PEERS,
        (THROUGHPUT, CPU),
    ),
    Workload(
        "publish_100",
        "confirmed persistent publish, 100 B, 100 in flight",
        "publish",
        {"n": 20_000, "inflight": 100, "size": 100, "budget": 60},
        {"n": 10_000},
        PROTOCOL_PEERS,
        (THROUGHPUT, CPU, BROKER_CPU),
    ),
    Workload(
        "consume",
        "consume with acks, 100 B, prefetch 100",
        "consume",
        {"n": 20_000, "prefetch": 100, "size": 100},
        {"n": 10_000},
        PROTOCOL_PEERS,
        (THROUGHPUT, CPU, BROKER_CPU),
    ),
    Workload(
        "tasks",
        "task round trips (send → worker → result), 100 outstanding",
        "tasks",
        {"n": 10_000, "inflight": 100, "prefetch": 100},
        {"n": 1_000},
        OTEL_PEERS,
        (THROUGHPUT, CPU, BROKER_CPU, P50),
    ),
    Workload(
        "rpc_seq",
        "RPC, sequential round trips",
        "rpc_seq",
        {"n": 500, "budget": 30},
        {"n": 200},
        COMM_PEERS,
        (P50, P99, CPU),
    ),
    Workload(
        "rpc_par",
        "RPC, 64 in flight",
        "rpc_par",
        {"n": 10_000, "inflight": 64},
        {"n": 2_000},
        OTEL_PEERS,
        (THROUGHPUT, CPU, BROKER_CPU),
    ),
    Workload(
        "broadcast_1",
        "broadcast to 1 filtered subscriber (half filtered out)",
        "broadcast",
        {"n": 2_000, "subscribers": 1, "inflight": 16},
        {"n": 500},
        COMM_PEERS,
        (Metric("msgs_per_s", "broadcasts/s", True), CPU),
    ),
    Workload(
        "broadcast_4",
        "broadcast to 4 filtered subscribers (half filtered out)",
        "broadcast",
        {"n": 2_000, "subscribers": 4, "inflight": 16},
        {"n": 500},
        COMM_PEERS,
        (Metric("msgs_per_s", "broadcasts/s", True), CPU),
    ),
    Workload(
        "large",
        "1 MiB messages: confirmed publish (8 in flight), then consume (prefetch 10)",
        "large",
        {"n": 200, "size": MIB, "inflight": 8, "prefetch": 10},
        {"n": 50},
        PROTOCOL_PEERS,
        (
            Metric("pub_mib_per_s", "publish MiB/s", True),
            Metric("con_mib_per_s", "consume MiB/s", True),
            Metric("pub_cpu_us_per_msg", "publish CPU µs/MiB", False),
            Metric("con_cpu_us_per_msg", "consume CPU µs/MiB", False),
        ),
    ),
    Workload(
        "recovery",
        "link cut -> RPC subscriber handling calls again (median of the cuts; default "
        "backoff, and no backoff)",
        "recovery",
        {"cuts": 5},
        {"cuts": 3},
        KIWI,
        (
            Metric("rpc_ok_ms", "RPC handled again ms", False, "{:,.1f}"),
            Metric("recovered_ms", "'recovered' event ms", False, "{:,.1f}"),
            Metric("fast_rpc_ok_ms", "no backoff: RPC handled ms", False, "{:,.1f}"),
            Metric("fast_recovered_ms", "no backoff: 'recovered' ms", False, "{:,.1f}"),
        ),
    ),
    Workload(
        "memory",
        "RSS growth over task round trips (kiwi_anyio, 100 outstanding)",
        "memory",
        {"n": 100_000, "warmup": 10_000, "inflight": 100, "prefetch": 100},
        {"n": 20_000, "warmup": 5_000},
        ("kiwi_anyio/asyncio",),
        (
            Metric("rss_growth_mib", "RSS growth MiB", False, "{:,.2f}"),
            Metric("rss_end_mib", "final RSS MiB", False, "{:,.1f}"),
            THROUGHPUT,
        ),
        full={"n": 1_000_000, "warmup": 20_000},
        repeats=1,
    ),
]
WORKLOAD_BY_NAME = {w.name: w for w in WORKLOADS}
CODEC = "codec"


# ---------------------------------------------------------------- running


def log(text: str) -> None:
    print(text, flush=True)


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _available(client: Client) -> str | None:
    """None if the client can run, else why not."""
    if not _python(client.venv).exists():
        return f"{client.venv.name} is missing (bash benchmarks/setup.sh)"
    return None


def _env(src: Path | None = None) -> dict[str, str]:
    paths = [HERE, *([src] if src else []), *KIWI_SRC]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONDEVMODE", None)
    return env


def _tree(rev: str) -> Path | None:
    """``rev`` as a directory holding ``kiwi_anyio/`` (e.g. a scratch ``git worktree`` with a
    patch applied), or None if it names a git revision."""
    path = Path(rev)
    return path.resolve() if (path / "kiwi_anyio").is_dir() else None


def _snapshot(rev: str) -> Path:
    """Extract ``kiwi_anyio/`` as committed at ``rev`` into a temporary directory."""
    target = Path(tempfile.mkdtemp(prefix="kiwi-bench-src-"))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "kiwi_anyio"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_one(
    client: Client, workload: str, url: str, params: dict[str, Any], timeout: float
) -> dict[str, Any]:
    cmd = [
        str(_python(client.venv)),
        str(HERE / client.script),
        workload,
        url,
        json.dumps({**params, **client.params}),
    ]
    env = _env(client.src)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
    return {"error": f"exit code {proc.returncode}: {tail}"}


def run_codec(quick: bool) -> dict[str, Any]:
    cmd = [str(_python(BENCH_VENV)), str(HERE / "codec_floor.py")]
    if quick:
        cmd.append("--quick")
    env = _env()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=HERE)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    return {"error": proc.stderr.strip()[-2000:]}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r and "unsupported" not in r]
    out: dict[str, Any] = {"runs": runs}
    if not good:
        first = runs[0] if runs else {}
        out["status"] = "unsupported" if "unsupported" in first else "error"
        out["note"] = first.get("unsupported") or first.get("error") or ""
        return out
    out["status"] = "ok" if len(good) == len(runs) else "partial"
    median: dict[str, float] = {}
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for key, value in good[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [float(r[key]) for r in good if isinstance(r.get(key), int | float)]
            median[key] = statistics.median(values)
            low[key] = min(values)
            high[key] = max(values)
    out["median"] = median
    out["min"] = low
    out["max"] = high
    return out


def describe(value: float | None, metric: Metric) -> str:
    if value is None:
        return "n/a"
    return metric.fmt.format(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: a few minutes")
    parser.add_argument(
        "--full", action="store_true", help="the memory workload over 1,000,000 messages"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workloads or prefixes: "
        + ", ".join([w.name for w in WORKLOADS] + [CODEC]),
    )
    parser.add_argument("--clients", default="", help="comma-separated client names")
    parser.add_argument("--repeat", type=int, default=3, help="runs per client (default 3)")
    parser.add_argument("--url", default="", help="use this broker instead of a private one")
    parser.add_argument(
        "--broker-pid",
        type=int,
        default=0,
        help="with --url: the broker's beam.smp process, to report its CPU per message",
    )
    parser.add_argument(
        "--codec",
        default="yaml",
        choices=("yaml", "json"),
        help="codec of the communicator workloads: yaml (default: every client's default, "
        "kiwiPy's wire format; kiwi_anyio's JSON codec runs beside it as +json columns) or json "
        "(every client with JSON)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    parser.add_argument(
        "--rev",
        default="",
        help="benchmark kiwi_anyio as committed at this git revision (e.g. HEAD) instead of "
        "the working tree; or a directory holding kiwi_anyio/ (a scratch worktree), used as it is",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="also run kiwi_anyio as committed at this git revision, as extra columns "
        "(`kiwi_anyio@REV/asyncio` …) interleaved with the others: a before/after comparison; "
        "or a directory holding kiwi_anyio/, as for --rev",
    )
    args = parser.parse_args(argv)
    if args.codec == "json":  # every client already uses JSON: no +json columns
        for i, w in enumerate(WORKLOADS):
            WORKLOADS[i] = dataclasses.replace(
                w, clients=tuple(c for c in w.clients if c not in KIWI_JSON)
            )
            WORKLOAD_BY_NAME[w.name] = WORKLOADS[i]
    snapshot: Path | None = None  # temporary: removed at the end
    if args.rev:
        src = _tree(args.rev) or (snapshot := _snapshot(args.rev))
        KIWI_SRC.append(src)
        sys.path.insert(0, str(src))
    baseline: Path | None = None  # temporary: removed at the end
    if args.baseline:
        src = _tree(args.baseline) or (baseline := _snapshot(args.baseline))
        _add_baseline_clients(args.baseline, src)

    wanted = [p.strip() for p in args.only.split(",") if p.strip()]

    def selected(name: str) -> bool:
        return not wanted or any(name == p or name.startswith(p) for p in wanted)

    workloads = [w for w in WORKLOADS if selected(w.name)]
    with_codec = selected(CODEC)
    client_filter = {c.strip() for c in args.clients.split(",") if c.strip()}
    if client_filter and args.baseline:  # a filtered kiwi_anyio client keeps its twin
        client_filter |= {
            c.name for c in CLIENTS if c.src is not None and _twin_of(c.name) in client_filter
        }
    if not workloads and not with_codec:
        parser.error(f"no workload matches {args.only!r}")
    if not _python(BENCH_VENV).exists():
        log(f"{BENCH_VENV} is missing: run `bash benchmarks/setup.sh` first")
        return 2

    meta = _meta(args)
    if args.baseline:
        meta["baseline"] = _git_state(args.baseline)
    try:
        return _main(args, workloads, with_codec, client_filter, meta)
    finally:
        for path in (snapshot, baseline):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


def _twin_of(name: str) -> str:
    """``kiwi_anyio@abc123/trio`` -> ``kiwi_anyio/trio``."""
    head, _, tail = name.partition("/")
    return f"{head.split('@')[0]}/{tail}"


def _add_baseline_clients(rev: str, src: Path) -> None:
    """``kiwi_anyio@REV/<backend>`` columns, next to each kiwi_anyio client, for ``--baseline``
    (``kiwi_anyio@<directory name>/<backend>`` for a directory)."""
    tree = _tree(rev)
    label = (
        tree.name
        if tree is not None
        else subprocess.run(
            ["git", "rev-parse", "--short", rev], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    )
    added: dict[str, str] = {}
    for name in KIWI:
        base = CLIENT_BY_NAME[name]
        twin = dataclasses.replace(
            base, name=name.replace("kiwi_anyio", f"kiwi_anyio@{label}"), src=src
        )
        CLIENTS.insert(CLIENTS.index(base) + 1, twin)
        CLIENT_BY_NAME[twin.name] = twin
        added[name] = twin.name
    for i, w in enumerate(WORKLOADS):
        clients = [c for name in w.clients for c in (name, added.get(name)) if c]
        WORKLOADS[i] = dataclasses.replace(w, clients=tuple(clients))
        WORKLOAD_BY_NAME[w.name] = WORKLOADS[i]


def _main(
    args: argparse.Namespace,
    workloads: list[Workload],
    with_codec: bool,
    client_filter: set[str],
    meta: dict[str, Any],
) -> int:
    started = time.monotonic()
    results: dict[str, Any] = {}

    if with_codec:
        log("codec floor (in-process) ...")
        results[CODEC] = run_codec(args.quick)
        log(f"  {_codec_line(results[CODEC])}")

    if workloads:
        broker = None
        url = args.url
        if not url:
            sys.path.append(str(ROOT))
            from kiwi_anyio.testing.rabbitmq import RabbitMQBroker

            broker = RabbitMQBroker(tls=False)
            log("starting a private RabbitMQ broker ...")
            broker.start()
            url = broker.url
            log(f"  broker up at {url} in {broker.last_start_seconds:.1f} s")
            meta["rabbitmq"] = _rabbitmq_version(broker)
            beam_pid = _beam_pid(broker)
            if beam_pid:
                os.environ[BROKER_PID_ENV] = str(beam_pid)
        elif args.broker_pid:
            os.environ[BROKER_PID_ENV] = str(args.broker_pid)
        try:
            _run_workloads(workloads, url, args, client_filter, results)
        finally:
            if broker is not None:
                broker.stop()
    meta["seconds"] = time.monotonic() - started
    report: dict[str, Any] = {
        "meta": meta,
        "workloads": _workload_meta(args),
        "results": results,
    }
    report["ratios"] = ratios(results)
    report["defaults"] = default_vs_default(results)
    report["goals"] = goals(results, args)
    write_outputs(report, Path(args.out))
    return 0


def _params(w: Workload, args: argparse.Namespace) -> dict[str, Any]:
    params = dict(w.params)
    if args.quick:
        params.update(w.quick)
    if args.full:
        params.update(w.full)
    params["codec"] = args.codec
    return params


def _workload_meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        w.name: {"title": w.title, "params": _params(w, args), "clients": list(w.clients)}
        for w in WORKLOADS
    }


def _run_workloads(
    workloads: list[Workload],
    url: str,
    args: argparse.Namespace,
    client_filter: set[str],
    results: dict[str, Any],
) -> None:
    plan: list[tuple[Workload, list[Client], int]] = []
    for w in workloads:
        clients = [
            CLIENT_BY_NAME[name] for name in w.clients if not client_filter or name in client_filter
        ]
        plan.append((w, clients, w.repeats or args.repeat))
    total = sum(len(clients) * repeats for _, clients, repeats in plan)
    done = 0
    for w, clients, repeats in plan:
        params = _params(w, args)
        timeout = 3600.0 if w.name == "memory" else (120.0 if args.quick else 300.0)
        log(f"\n== {w.name}: {w.title}  {json.dumps(params)}")
        runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in clients}
        skip: dict[str, str] = {}
        for c in clients:
            why = _available(c)
            if why:
                skip[c.name] = why
        for r in range(repeats):
            for c in clients:  # interleaved, so drift hits every client alike
                done += 1
                if c.name in skip:
                    runs[c.name].append({"unsupported": skip[c.name]})
                    continue
                t0 = time.monotonic()
                result = run_one(c, w.client_workload, url, params, timeout)
                runs[c.name].append(result)
                took = time.monotonic() - t0
                if "unsupported" in result:
                    skip[c.name] = result["unsupported"]
                    line = f"n/a ({result['unsupported']})"
                elif "error" in result:
                    line = "ERROR " + result["error"].replace("\n", "\n      ")
                else:
                    line = ", ".join(
                        f"{m.label} {describe(result.get(m.key), m)}" for m in w.metrics
                    )
                log(f"  [{done}/{total}] {c.name:<20} run {r + 1}/{repeats}: {line} ({took:.1f} s)")
        results[w.name] = {name: _summary(rs) for name, rs in runs.items()}


# ---------------------------------------------------------------- analysis


def _median(results: dict[str, Any], workload: str, client: str, key: str) -> float | None:
    entry = results.get(workload, {}).get(client)
    if not entry or "median" not in entry:
        return None
    value = entry["median"].get(key)
    return float(value) if value is not None else None


def _ratio(subject: float | None, peer: float | None, higher_is_better: bool) -> float | None:
    if subject is None or peer is None or subject <= 0 or peer <= 0:
        return None
    return subject / peer if higher_is_better else peer / subject


def ratios(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{workload: {metric: {peer: ratio}}}``; above 1 = kiwi_anyio/asyncio better."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for w in WORKLOADS:
        if w.name not in results:
            continue
        per_metric: dict[str, dict[str, float | None]] = {}
        for m in w.metrics:
            subject = _median(results, w.name, SUBJECT, m.key)
            per_metric[m.key] = {
                peer: _ratio(subject, _median(results, w.name, peer, m.key), m.higher_is_better)
                for peer in w.clients
                if peer != SUBJECT
            }
        out[w.name] = per_metric
    return out


#: (workload, metric) pairs of the default-vs-default comparison (issue 14).
DEFAULTS_COMPARED = (
    ("tasks", THROUGHPUT),
    ("tasks", CPU),
    ("rpc_par", THROUGHPUT),
    ("rpc_par", CPU),
    ("rpc_seq", P50),
    ("broadcast_1", Metric("msgs_per_s", "broadcasts/s", True)),
)


def _best_kiwipy(results: dict[str, Any], workload: str, metric: Metric) -> float | None:
    values = [
        v
        for v in (
            _median(results, workload, c, metric.key) for c in ("kiwiPy/thread", "kiwiPy/asyncio")
        )
        if v is not None
    ]
    if not values:
        return None
    return max(values) if metric.higher_is_better else min(values)


def default_vs_default(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each client with its default codec, and kiwi_anyio with JSON, in the same run.

    Rows: (workload, metric, backend) with kiwi_anyio's default (YAML), kiwiPy's best flavour
    (YAML), kiwi_anyio with JSON, and the ratios (above 1 = the default kiwi_anyio better).
    Empty unless the run had the ``+json`` columns (``--codec yaml``).
    """
    rows: list[dict[str, Any]] = []
    for workload, metric in DEFAULTS_COMPARED:
        for backend in ("asyncio", "trio"):
            default = _median(results, workload, f"kiwi_anyio/{backend}", metric.key)
            as_json = _median(results, workload, f"kiwi_anyio/{backend}+json", metric.key)
            if default is None or as_json is None:
                continue
            kiwipy = _best_kiwipy(results, workload, metric)
            rows.append(
                {
                    "workload": workload,
                    "metric": metric.label,
                    "key": metric.key,
                    "backend": backend,
                    "default": default,
                    "kiwipy": kiwipy,
                    "json": as_json,
                    "vs_kiwipy": _ratio(default, kiwipy, metric.higher_is_better),
                    "vs_json": _ratio(default, as_json, metric.higher_is_better),
                    "fmt": metric.fmt,
                }
            )
    return rows


def goals(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issues' targets, each with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    codec = results.get(CODEC, {})

    def add(goal: str, value: float | None, target: str, met: bool | None, note: str = "") -> None:
        out.append({"goal": goal, "value": value, "target": target, "met": met, "note": note})

    for workload, floor_key, label in (
        ("publish_100", "minimal_floor_publish_us", "confirmed publish (100 in flight)"),
        ("publish_1", "minimal_floor_publish_us", "confirmed publish (1 in flight)"),
        ("consume", "minimal_floor_consume_us", "consume + ack"),
    ):
        cpu = _median(results, workload, SUBJECT, "cpu_us_per_msg")
        floor = codec.get(floor_key)
        value = cpu / floor if cpu is not None and floor else None
        add(
            f"{label}: client CPU per message / pamqp codec floor",
            value,
            "≤ 2",
            None if value is None else value <= 2,
            f"{cpu:.1f} µs vs floor {floor:.1f} µs" if value is not None else "",
        )
    for peer, target in (("kiwiPy/thread", 10.0), ("kiwiPy/asyncio", 10.0), ("aio-pika", 2.0)):
        r = _ratio(
            _median(results, "tasks", SUBJECT, "msgs_per_s"),
            _median(results, "tasks", peer, "msgs_per_s"),
            True,
        )
        add(f"task round-trip throughput vs {peer}", r, f"≥ {target:g}x", _ge(r, target))
    for peer in ("kiwiPy/thread", "kiwiPy/asyncio"):
        r = _ratio(
            _median(results, "rpc_par", SUBJECT, "msgs_per_s"),
            _median(results, "rpc_par", peer, "msgs_per_s"),
            True,
        )
        add(f"RPC throughput, 64 in flight, vs {peer}", r, "≥ 5x", _ge(r, 5.0))
    ours = _median(results, "rpc_seq", SUBJECT, "p50_ms")
    theirs = _median(results, "rpc_seq", "aio-pika", "p50_ms")
    add(
        "sequential RPC p50: aio-pika's / ours",
        _ratio(ours, theirs, False),
        "≥ 1 (no slower)",
        _ge(_ratio(ours, theirs, False), 1.0),
        f"{ours:.3f} ms vs {theirs:.3f} ms" if ours and theirs else "",
    )
    for kind in ("throughput", "client CPU"):
        worst: tuple[float, str] | None = None
        for w in WORKLOADS:
            if w.name in ("memory", "recovery") or "kiwi_anyio/trio" not in w.clients:
                continue
            picked = (
                [w.metrics[0]]
                if kind == "throughput"
                else [m for m in w.metrics if "cpu" in m.key and "broker" not in m.key]
            )
            for m in picked:
                r = _ratio(
                    _median(results, w.name, SUBJECT, m.key),
                    _median(results, w.name, "kiwi_anyio/trio", m.key),
                    m.higher_is_better,
                )
                if r is not None and (worst is None or r > worst[0]):
                    worst = (r, f"{w.name} {m.label}")
        add(
            f"trio vs asyncio, worst workload by {kind} (asyncio's advantage)",
            worst[0] if worst else None,
            "≤ 1.25",
            None if worst is None else worst[0] <= 1.25,
            worst[1] if worst else "",
        )
    for row in default_vs_default(results):
        if row["key"] != "msgs_per_s" or row["workload"] not in ("tasks", "rpc_par"):
            continue
        r = row["vs_json"]
        add(
            f"{row['workload']} {row['metric']} on {row['backend']}: default codec (YAML) vs JSON",
            r,
            "≥ 0.83x (within 1.2x of JSON)",
            _ge(r, 1 / 1.2),
        )
    growth = _median(results, "memory", SUBJECT, "rss_growth_mib")
    n = _median(results, "memory", SUBJECT, "rss_growth_n")
    note = ""
    if growth is not None and n:
        note = f"over {n:,.0f} round trips after the warm-up"
        if n < 1_000_000:
            note += f" (run --full for 1,000,000; linear extrapolation {growth * 1e6 / n:.1f} MiB)"
    add("RSS growth over task round trips", growth, "< 20 MiB / 1,000,000", _lt(growth, 20.0), note)
    return out


def _ge(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _lt(value: float | None, target: float) -> bool | None:
    return None if value is None else value < target


# ---------------------------------------------------------------- output


def _codec_line(codec: dict[str, Any]) -> str:
    if "error" in codec:
        return "ERROR " + str(codec["error"])
    return (
        f"pamqp floor publish {codec['minimal_floor_publish_us']:.1f} µs, "
        f"consume {codec['minimal_floor_consume_us']:.1f} µs; "
        f"kiwi_anyio core publish {codec['minimal_core_publish_us']:.1f} µs, "
        f"consume {codec['minimal_core_consume_us']:.1f} µs"
    )


def _cell(entry: dict[str, Any] | None, metric: Metric) -> str:
    if not entry:
        return ""
    if "median" not in entry:
        return "n/a" if entry.get("status") == "unsupported" else "error"
    value = entry["median"].get(metric.key)
    if value is None:
        return "n/a"
    text = metric.fmt.format(value)
    lo, hi = entry["min"].get(metric.key), entry["max"].get(metric.key)
    if len(entry["runs"]) > 1 and lo is not None and hi is not None and value:
        text += f" ±{(hi - lo) / 2 / value * 100:.0f}%"
    return text


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    meta = report["meta"]
    lines = [
        "# kiwi_anyio benchmark results",
        "",
        f"{meta['date']} · {meta['cpu']} ({meta['cores']} cores) · Python {meta['python']} · "
        f"RabbitMQ {meta.get('rabbitmq', '?')} · mode `{meta['mode']}` · "
        f"{meta['repeat']} runs per client (median, ± half the min-max spread) · "
        f"{meta['seconds']:.0f} s · kiwi_anyio at {meta.get('git', '?')}",
        "",
        "Each run is a fresh process; CPU is that client process's user+system time during the "
        "measured phase, divided by the messages (round trips for tasks/RPC). The broker "
        "shares the machine.",
        "",
    ]
    names = [c.name for c in CLIENTS]
    present = [n for n in names if any(n in results.get(w.name, {}) for w in WORKLOADS)]
    codec = meta.get("codec", "json")
    defaults = report.get("defaults") or []
    if defaults:
        lines += [
            "## Default vs default (issue 14): every client with its default codec",
            "",
            "kiwi_anyio's default codec and kiwiPy's are both YAML (kiwiPy's wire format); "
            "kiwiPy is its better flavour (thread or asyncio) per row; the JSON column is "
            "kiwi_anyio with `codec=JSON` in the same run. Ratios above 1: kiwi_anyio's default "
            "better.",
            "",
            "| workload | metric | backend | kiwi_anyio default (YAML) | kiwiPy default (YAML) "
            "| kiwi_anyio JSON | default vs kiwiPy | default vs JSON |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in defaults:
            fmt = row["fmt"]

            def num(value: float | None, fmt: str = fmt) -> str:
                return "" if value is None else fmt.format(value)

            lines.append(
                f"| {row['workload']} | {row['metric']} | {row['backend']} | {num(row['default'])} "
                f"| {num(row['kiwipy'])} | {num(row['json'])} | {_fmt_ratio(row['vs_kiwipy'])} "
                f"| {_fmt_ratio(row['vs_json'])} |"
            )
        lines += [""]
    if present:
        lines += ["## Results", ""]
        lines.append(
            "Codec: the communicator workloads run each client with "
            + (
                "its default codec (YAML for kiwi_anyio and kiwiPy; aio-pika's hand-written "
                "equivalents send JSON); `+json` columns are kiwi_anyio with its JSON codec."
                if codec == "yaml"
                else "JSON."
            )
            + " The protocol workloads send raw bytes.",
        )
        lines += [""]
        lines.append("| workload | codec | metric | " + " | ".join(present) + " |")
        lines.append("|---|---|---|" + "---|" * len(present))
        for w in WORKLOADS:
            if w.name not in results:
                continue
            label = (
                ("default (YAML)" if codec == "yaml" else "JSON")
                if w.name in CODEC_WORKLOADS
                else "raw bytes"
            )
            for m in w.metrics:
                cells = [_cell(results[w.name].get(n), m) for n in present]
                lines.append(f"| {w.name} | {label} | {m.label} | " + " | ".join(cells) + " |")
        lines += ["", "## Ratios: kiwi_anyio on asyncio vs each peer (above 1 = kiwi_anyio better)"]
        lines += [""]
        peers = [n for n in present if n != SUBJECT]
        lines.append("| workload | metric | " + " | ".join(f"vs {p}" for p in peers) + " |")
        lines.append("|---|---|" + "---|" * len(peers))
        for w in WORKLOADS:
            per_metric = report["ratios"].get(w.name)
            if not per_metric:
                continue
            for m in w.metrics:
                row = per_metric.get(m.key, {})
                cells = [_fmt_ratio(row.get(p)) for p in peers]
                if any(cells):
                    lines.append(f"| {w.name} | {m.label} | " + " | ".join(cells) + " |")
        lines += [""]
    floor = results.get(CODEC)
    if floor and "error" not in floor:
        lines += [
            "## Per-message codec floor (in-process, µs)",
            "",
            "| properties | pamqp floor publish | pamqp floor consume+ack | "
            "kiwi_anyio core publish | kiwi_anyio core consume+ack |",
            "|---|---|---|---|---|",
        ]
        for kind in ("minimal", "communicator"):
            lines.append(
                f"| {kind} | {floor[f'{kind}_floor_publish_us']:.1f} | "
                f"{floor[f'{kind}_floor_consume_us']:.1f} | "
                f"{floor[f'{kind}_core_publish_us']:.1f} | "
                f"{floor[f'{kind}_core_consume_us']:.1f} |"
            )
        lines += [
            "",
            "minimal: `delivery_mode=2` (workload 1); communicator: content type, delivery "
            "mode, correlation id, reply-to and message id (a task). Core: kiwi_anyio's "
            "sans-I/O `AMQPConnection` with no socket and no event loop.",
            "",
        ]
    if report["goals"]:
        lines += ["## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
        for g in report["goals"]:
            value = "" if g["value"] is None else f"{g['value']:.2f}"
            if g["note"]:
                value += f" ({g['note']})"
            met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
            lines.append(f"| {g['goal']} | {value} | {g['target']} | {met} |")
        lines += [""]
    lines += ["## Workloads", ""]
    for name, wm in report["workloads"].items():
        if name in results:
            lines.append(f"- **{name}**: {wm['title']}; `{json.dumps(wm['params'])}`")
    notes = []
    for w in WORKLOADS:
        for client, entry in results.get(w.name, {}).items():
            if entry.get("status") in ("unsupported", "error"):
                notes.append(f"- {w.name} / {client}: {entry['status']}: {entry.get('note', '')}")
    if notes:
        lines += ["", "## Not measured", "", *notes]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown(report)
    (out / "latest.md").write_text(text)
    log("\n" + text)
    log(f"wrote {out / 'latest.json'} and {out / 'latest.md'}")
    try:
        plot = importlib.import_module("plot_results")
    except ImportError as exc:
        log(f"no plot ({exc})")
        return
    try:
        plot.plot(report, out / "latest.png")
        log(f"wrote {out / 'latest.png'}")
    except ImportError as exc:
        log(f"no plot: matplotlib is not importable ({exc})")


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mode = "full" if args.full else "quick" if args.quick else "default"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mode": mode,
        "repeat": args.repeat,
        "codec": args.codec,
        "argv": sys.argv[1:],
        "git": _git_state(args.rev),
    }


def _git_state(rev: str) -> str:
    """The commit benchmarked, and whether kiwi_anyio/ had uncommitted changes."""
    tree = _tree(rev) if rev else None
    cwd = tree or ROOT
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD" if tree or not rev else rev],
            capture_output=True,
            text=True,
            cwd=cwd,
        ).stdout.strip()
        if rev and tree is None:
            return f"{head} (committed snapshot)"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "kiwi_anyio"],
            capture_output=True,
            text=True,
            cwd=cwd,
        ).stdout.strip()
        if tree is not None:
            head = f"{tree}: {head or 'no commit'}"
    except OSError:
        return "?"
    return (head or "no commit") + (" + uncommitted kiwi_anyio changes" if dirty else "")


def _beam_pid(broker: Any) -> int | None:
    """The private broker's ``beam.smp`` process (its pid file), or None."""
    try:
        return int((Path(broker.home) / "beam.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _rabbitmq_version(broker: Any) -> str:
    try:
        return str(broker.ctl("version")).strip()
    except Exception as exc:
        return f"? ({exc})"


def _reexec_in_bench_venv() -> None:
    """Run under .venv-bench's Python (kiwi_anyio and matplotlib live there)."""
    target = _python(BENCH_VENV)
    if not target.exists() or os.environ.get("KIWI_BENCH_REEXEC"):
        return
    if Path(sys.prefix).resolve() == BENCH_VENV.resolve():
        return
    os.environ["KIWI_BENCH_REEXEC"] = "1"
    os.execv(str(target), [str(target), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    _reexec_in_bench_venv()
    sys.path.insert(0, str(HERE))
    sys.exit(main())

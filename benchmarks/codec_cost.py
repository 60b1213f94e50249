"""What each body codec costs, in process: µs per small body, MiB/s for large ones.

    .venv/bin/python benchmarks/codec_cost.py            # ~1 minute
    .venv/bin/python benchmarks/codec_cost.py --mib 20   # the 20 MiB of issue 19 (slower)

Codecs: kiwi_anyio's default ``YAML`` (fast path with the PyYAML fallback), ``YAML`` as it was
before the fast path (``yaml.dump`` with the safe dumper, libyaml ``CSafeLoader``: "YAML
(PyYAML)"), kiwiPy's own functions (``yaml.dump`` / ``yaml.load(FullLoader)``), ``JSON`` and
``MSGPACK``. Bodies: the small dict of issue 14 (``{"i": i, "p": "x" * 64}``) alone and as a
task body ``(dict, False)``, and large bodies of several shapes. A codec that cannot represent
a shape (JSON and bytes) shows ``n/a``. Each figure is the best of a few runs (the machine may
be shared); MiB are of the value's encoded size in the codec measured.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from kiwi_anyio import codecs

Encode = Callable[[Any], bytes]
Decode = Callable[[bytes], Any]


def _kiwipy_encode(obj: Any) -> bytes:
    data = yaml.dump(obj, encoding="utf-8")
    assert isinstance(data, bytes)
    return data


def _kiwipy_decode(data: bytes) -> Any:
    return yaml.load(data, Loader=yaml.FullLoader)


CODECS: dict[str, tuple[Encode, Decode]] = {
    "YAML (default)": (codecs.YAML.encode, codecs.YAML.decode),
    "YAML (PyYAML, before)": (
        codecs._yaml_encode_with_pyyaml,
        codecs._yaml_decode_with_loader,
    ),
    "kiwiPy yaml.dump/FullLoader": (_kiwipy_encode, _kiwipy_decode),
    "JSON": (codecs.JSON.encode, codecs.JSON.decode),
    "msgpack": (codecs.MSGPACK.encode, codecs.MSGPACK.decode),
}

#: Codecs too slow to run on large bodies of the full size: measured on 1 MiB instead.
SLOW = {"YAML (PyYAML, before)", "kiwiPy yaml.dump/FullLoader"}

SMALL = {"i": 12345, "p": "x" * 64}


def best_of(func: Callable[[], object], repeat: int, number: int) -> float:
    """Best seconds per call over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            func()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def large_bodies(mib: float) -> dict[str, Any]:
    """Values of about ``mib`` MiB (in JSON) of several shapes."""
    size = int(mib * 1024 * 1024)
    records = size // 80
    return {
        "list of small dicts": [{"i": i, "p": "x" * 64} for i in range(records)],
        "one ASCII string": "lorem ipsum dolor " * (size // 18),
        "non-ASCII string": "日本語のテキスト、" * (size // 27),
        "list of floats": [i / 7 for i in range(size // 20)],
        "list of ints": list(range(size // 8)),
        "bytes": bytes(range(256)) * (size // 256),
    }


def small(out: list[str]) -> None:
    """µs per small body."""
    out.append("| codec | dict encode µs | dict decode µs | task body encode µs | task decode µs |")
    out.append("|---|---|---|---|---|")
    for name, (encode, decode) in CODECS.items():
        cells = []
        for value in (SMALL, (SMALL, False)):
            number = 500 if name in SLOW else 20_000
            wire = encode(value)
            cells.append(best_of(functools.partial(encode, value), 5, number) * 1e6)
            cells.append(best_of(functools.partial(decode, wire), 5, number) * 1e6)
        out.append(f"| {name} | " + " | ".join(f"{c:,.1f}" for c in cells) + " |")


def large(out: list[str], mib: float) -> None:
    """MiB/s (and ms per MiB) for large bodies."""
    out.append("| body | codec | size MiB | encode MiB/s | decode MiB/s | encode+decode ms/MiB |")
    out.append("|---|---|---|---|---|---|")
    full = large_bodies(mib)
    one = large_bodies(min(mib, 1.0))
    for shape in full:
        for name, (encode, decode) in CODECS.items():
            value = (one if name in SLOW else full)[shape]
            try:
                wire = encode(value)
            except (TypeError, ValueError):
                out.append(f"| {shape} | {name} | n/a | n/a | n/a | n/a |")
                continue
            repeat = 1 if name in SLOW else 3
            enc = best_of(functools.partial(encode, value), repeat, 1)
            dec = best_of(functools.partial(decode, wire), repeat, 1)
            size = len(wire) / (1024 * 1024)
            out.append(
                f"| {shape} | {name} | {size:,.1f} | {size / enc:,.0f} | {size / dec:,.0f} "
                f"| {(enc + dec) / size * 1e3:,.0f} |"
            )
            print(out[-1], file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=8.0, help="size of the large bodies")
    args = parser.parse_args()
    out: list[str] = [f"Python {sys.version.split()[0]}, PyYAML {yaml.__version__}", ""]
    small(out)
    out.append("")
    large(out, args.mib)
    print("\n".join(out))


if __name__ == "__main__":
    main()

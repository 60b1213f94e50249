#!/usr/bin/env bash
# Create the benchmark environments (idempotent):
#   .venv-bench   kiwi_anyio (editable) + trio, aio-pika, aiormq, pika, uvloop, matplotlib, py-spy
#   .venv-kiwipy  kiwiPy 0.9.0 (it pins pamqp 3, so it cannot share .venv-bench)
# and Debian's rabbitmq-server if it is missing (run.py starts a private broker from it).
# Optional packages (uvloop, matplotlib, py-spy) are skipped if they do not install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
PIP=(--quiet --disable-pip-version-check)

if [ ! -x .venv-bench/bin/python ]; then
    "$PYTHON" -m venv .venv-bench
fi
.venv-bench/bin/python -m pip install "${PIP[@]}" -e '.[trio]' aio-pika aiormq pika
for optional in uvloop matplotlib py-spy; do
    .venv-bench/bin/python -m pip install "${PIP[@]}" "$optional" \
        || echo "setup.sh: $optional did not install; its parts of the benchmark are skipped" >&2
done

if [ ! -x .venv-kiwipy/bin/python ]; then
    "$PYTHON" -m venv .venv-kiwipy
fi
if ! .venv-kiwipy/bin/python -c \
    'import kiwipy.rmq, sys; sys.exit(kiwipy.__version__ != "0.9.0")' 2>/dev/null; then
    .venv-kiwipy/bin/python -m pip install "${PIP[@]}" 'kiwipy[rmq]==0.9.0'
fi

if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && [ -z "${KIWI_ANYIO_RABBITMQ_BIN:-}" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup.sh: install Debian's rabbitmq-server (as root: apt-get install rabbitmq-server)" >&2
        exit 1
    fi
    # keep the package's postinst from starting the system broker; run.py starts its own
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    status=0
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends rabbitmq-server || status=$?
    if [ "$made_policy" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    [ "$status" = 0 ] || exit "$status"
fi

.venv-bench/bin/python - <<'EOF'
import importlib.metadata as md
for name in ("kiwi-anyio", "pamqp", "anyio", "trio", "aio-pika", "aiormq", "pika", "uvloop",
             "matplotlib", "py-spy"):
    try:
        print(f"  .venv-bench  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  .venv-bench  {name} (not installed)")
EOF
.venv-kiwipy/bin/python -c 'import kiwipy, importlib.metadata as md
print("  .venv-kiwipy kiwipy", kiwipy.__version__, "pamqp", md.version("pamqp"))'
echo "ready: python benchmarks/run.py --quick"

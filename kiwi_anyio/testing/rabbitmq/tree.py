"""The Debian tree a RabbitMQ 4 broker runs from, and running commands chrooted in it.

:func:`ensure_rabbitmq4_root` builds (once, then reuses) a Debian 13 "trixie" tree holding
RabbitMQ 4 with ``debootstrap``; :data:`RABBITMQ_4_3_DEFAULTS` are the configuration lines
that make its RabbitMQ 4.0 refuse what 4.3 refuses by default. A broker with ``root=``
(:class:`~kiwi_anyio.testing.rabbitmq.RabbitMQBroker`) runs each of its processes through
:func:`_in_root_command`: chrooted in the tree, with a private ``/proc`` mount.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._processes import _tail
from .errors import BrokerError, BrokerStartError

#: checkout, so that it survives between test runs on one machine).
DEFAULT_RABBITMQ4_ROOT = Path("/var/cache/kiwi-anyio/rabbitmq4-trixie")
#: The Debian release whose ``rabbitmq-server`` (4.0.x) the tree holds.
RABBITMQ4_SUITE = "trixie"
#: ``rabbitmq.conf`` lines that make RabbitMQ 4.0 refuse what 4.3 refuses by default: a queue
#: that is neither durable nor exclusive (541 INTERNAL_ERROR) and ``basic.qos`` with
#: ``global=true``.
RABBITMQ_4_3_DEFAULTS: tuple[str, ...] = (
    "deprecated_features.permit.transient_nonexcl_queues = false",
    "deprecated_features.permit.global_qos = false",
)


# Where a Debian tree (``root=``) has RabbitMQ's scripts and epmd, as seen inside it.
_ROOT_BIN_DIR = "/usr/lib/rabbitmq/bin"
_ROOT_EPMD = "/usr/bin/epmd"
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Runs "CMD ARGS..." chrooted in "$0" in a mount namespace of its own with /proc mounted there:
# the mount is private to the processes started from it and goes away when the last one ends.
# unshare and chroot exec (no fork), so the command keeps the pid the launcher sees.
_IN_ROOT_SCRIPT = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'


def _in_root_command(root: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` (paths as seen inside ``root``) run chrooted in ``root`` with its own /proc."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        _IN_ROOT_SCRIPT,
        str(root),
        *argv,
    ]


def _rabbitmq_version(bin_dir: Path) -> str | None:
    """The version of the RabbitMQ whose scripts are in ``bin_dir`` (``lib/rabbitmq_server-V``)."""
    found = sorted((bin_dir.parent / "lib").glob("rabbitmq_server-*"))
    if not found:
        return None
    return found[-1].name.removeprefix("rabbitmq_server-")


def _check_root(root: Path) -> None:
    """Fail early and clearly if the tree ``root`` or a chroot into it is unusable."""
    server = root / _ROOT_BIN_DIR.lstrip("/") / "rabbitmq-server"
    if not server.exists():
        raise BrokerStartError(
            f"{server} not found: {root} is no RabbitMQ tree (see ensure_rabbitmq4_root)"
        )
    try:
        proc = subprocess.run(
            _in_root_command(root, ["/bin/true"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30.0,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerStartError(f"cannot run a command chrooted in {root}: {exc}") from exc
    if proc.returncode != 0:
        raise BrokerStartError(
            f"cannot run a command chrooted in {root} with its own /proc (needs root and "
            f"unshare): exit code {proc.returncode}: "
            f"{proc.stderr.decode('utf-8', 'replace').strip()}"
        )


# The stamp file of a complete tree, and the version of the recipe that made it: a tree made by
# another recipe is rebuilt.
_ROOT_STAMP = ".kiwi-anyio-root.json"
_ROOT_RECIPE = 1
_ROOT_INSTALL = (
    "apt-get update -qq"
    " && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
    " rabbitmq-server"
    " && apt-get clean"
)


def _root_stamp(root: Path) -> dict[str, Any] | None:
    """The stamp of a complete tree made by this recipe, or None."""
    try:
        stamp = json.loads((root / _ROOT_STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("recipe") != _ROOT_RECIPE:
        return None
    if not (root / _ROOT_BIN_DIR.lstrip("/") / "rabbitmq-server").exists():
        return None
    return stamp


def _host_debian_mirror() -> str | None:
    """The Debian archive this machine's apt uses (``KIWI_ANYIO_DEBIAN_MIRROR`` overrides it).

    The URI of an enabled ``deb`` source for the host's own Debian release; None when there is
    none (not Debian, or nothing found), leaving debootstrap its default.
    """
    override = os.environ.get("KIWI_ANYIO_DEBIAN_MIRROR")
    if override:
        return override
    try:
        release = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
    except OSError:
        return None
    if release.get("ID", "").strip('"') != "debian":
        return None
    codename = release.get("VERSION_CODENAME", "").strip('"')
    if not codename:
        return None
    apt = Path("/etc/apt")
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in path.read_text().split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and codename in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                    and fields.get("uris")
                ):
                    return fields["uris"].split()[0]
    lists = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in lists:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] != ["deb"]:
                    continue
                words = words[1:]
                if words and words[0].startswith("["):
                    while words and not words[0].endswith("]"):
                        words.pop(0)
                    words = words[1:]
                if len(words) >= 2 and words[1] == codename:
                    return words[0]
    return None


def _processes_in_tree(root: Path) -> list[int]:
    """Pids of processes whose root directory or working directory is inside ``root``."""
    found = []
    prefix = str(root).rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for link in ("root", "cwd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{entry}/{link}")
                if (target + "/").startswith(prefix):
                    found.append(int(entry))
                    break
    return found


def _remove_tree(root: Path) -> None:
    """Remove a tree this module made, unless a process runs in it or something is mounted."""
    busy = _processes_in_tree(root)
    if busy:
        raise BrokerError(f"cannot remove {root}: processes {busy} run in it")
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mounts") as f:
        mounted = [line.split()[1] for line in f if (line.split()[1] + "/").startswith(prefix)]
    if mounted:
        raise BrokerError(f"cannot remove {root}: {mounted} are mounted in it")
    shutil.rmtree(root)


def _run_logged(cmd: Sequence[str], log_path: Path, what: str, **kwargs: Any) -> None:
    """Run ``cmd`` with its output appended to ``log_path``; BrokerError with the log's tail."""
    with open(log_path, "ab") as out:
        code = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            **kwargs,
        ).returncode
    if code != 0:
        raise BrokerError(f"{what} failed with exit code {code}:\n{_tail(log_path, 30)}")


def _build_root(dest: Path, mirror: str | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Make a Debian trixie tree with rabbitmq-server in the empty directory ``dest``.

    Returns the facts for the stamp (version, seconds per step).
    """
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if debootstrap is None:
        raise BrokerError("debootstrap not found: apt-get install debootstrap")
    log_path = dest.parent / f"{dest.name}.log"  # kept after the build, for a look
    log_path.write_bytes(b"")
    t0 = time.monotonic()
    cmd = [debootstrap, "--variant=minbase", RABBITMQ4_SUITE, str(dest)]
    if mirror:
        cmd.append(mirror)
    say(f"debootstrap --variant=minbase {RABBITMQ4_SUITE} {dest} {mirror or ''}".rstrip())
    _run_logged(cmd, log_path, "debootstrap")
    t1 = time.monotonic()
    say(f"debootstrap: {t1 - t0:.1f} s")
    # No service starts from a package's postinst; the tests start their own broker.
    policy = dest / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (dest / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    with contextlib.suppress(OSError):
        shutil.copyfile("/etc/resolv.conf", dest / "etc/resolv.conf")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KIWI_ANYIO_")}
    env.update({"PATH": _ROOT_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    say("apt-get install rabbitmq-server (in the tree)")
    _run_logged(
        _in_root_command(dest, ["/bin/sh", "-c", _ROOT_INSTALL]),
        log_path,
        "installing rabbitmq-server in the tree",
        env=env,
    )
    t2 = time.monotonic()
    version = _rabbitmq_version(dest / _ROOT_BIN_DIR.lstrip("/"))
    if version is None:
        raise BrokerError(f"rabbitmq-server is not in {dest} after installing it")
    say(f"rabbitmq-server {version}: {t2 - t1:.1f} s")
    return {
        "recipe": _ROOT_RECIPE,
        "suite": RABBITMQ4_SUITE,
        "mirror": mirror,
        "rabbitmq": version,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "debootstrap_seconds": round(t1 - t0, 1),
        "install_seconds": round(t2 - t1, 1),
    }


def ensure_rabbitmq4_root(
    cache_dir: str | os.PathLike[str] = DEFAULT_RABBITMQ4_ROOT,
    *,
    mirror: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """A Debian 13 "trixie" tree with its ``rabbitmq-server`` (RabbitMQ 4.0) in ``cache_dir``.

    Idempotent: a complete tree (its stamp file ``.kiwi-anyio-root.json`` names this recipe)
    is reused at once. Otherwise the tree is built in ``.NAME.building`` beside it and renamed
    into place once complete, so an interrupted build is never taken for a tree: the next call
    removes what it left and starts again (``debootstrap --variant=minbase``, then ``apt-get
    install rabbitmq-server`` in the tree with services kept from starting; about half a
    minute and 500 MB). A lock file beside the tree makes concurrent calls wait for one build.

    Needs root, ``debootstrap`` and ``unshare``, and reaches Debian's archive: ``mirror``, else
    the one this machine's apt uses for its own release (``KIWI_ANYIO_DEBIAN_MIRROR``
    overrides it), else debootstrap's default. ``log`` receives progress lines (default:
    standard error). Raises :class:`BrokerError` when the build fails, or when ``cache_dir``
    exists and holds something other than a tree made here.
    """
    dest = Path(cache_dir).absolute()
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if _root_stamp(dest) is not None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _root_stamp(dest) is not None:
            return dest  # built by another process meanwhile
        building = dest.parent / f".{dest.name}.building"
        if building.exists():
            say(f"removing the half-made tree {building}")
            _remove_tree(building)
        if dest.exists():
            if (dest / _ROOT_STAMP).exists():
                say(f"removing the outdated or damaged tree {dest}")
                _remove_tree(dest)
            elif any(dest.iterdir()):
                raise BrokerError(f"{dest} exists and is not a tree made by ensure_rabbitmq4_root")
            else:
                dest.rmdir()
        building.mkdir()
        try:
            stamp = _build_root(
                building, mirror if mirror is not None else _host_debian_mirror(), say
            )
            (building / _ROOT_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        except BaseException:
            with contextlib.suppress(Exception):
                _remove_tree(building)
            raise
        os.rename(building, dest)
    return dest

#!/usr/bin/env python3
"""A throwaway three-node RabbitMQ cluster on loopback for functional tests.

Usage::

    python tools/rabbit_cluster.py install   # apt-get the broker, iptables, openssl
    python tools/rabbit_cluster.py start     # fresh 3-node cluster (kills leftovers first)
    python tools/rabbit_cluster.py status    # exit 0 when all nodes run and are clustered
    python tools/rabbit_cluster.py env       # shell exports: URLs, ports, TLS files
    python tools/rabbit_cluster.py stop      # SIGKILL our nodes, drop our firewall rules

The same module is imported by ``tests/functional/conftest.py``. Standard
library only, so it runs on a fresh machine before any virtualenv exists.

How it works
------------
Every node is a plain ``/usr/lib/rabbitmq/bin/rabbitmq-server`` process (not
the ``/usr/sbin`` wrapper, which switches to the ``rabbitmq`` user) started
with ``setsid --fork`` (its own session; not our child, so never our zombie)
and its own environment: node name, dist port (bound to 127.0.0.1),
``rabbitmq.conf``, ``enabled_plugins``, mnesia, log and pid file, all under
``$RHA_TEST_DATA_DIR/nodes/<node>``. ``HOME`` is the data directory for the
servers and for ``rabbitmqctl``, so our nodes share a private Erlang cookie
and never read or write ``~/.erlang.cookie`` of a broker that may already run
here. ``rabbitmqctl`` gets its own distribution port range too: its default
(35672-35682) is derived from the default broker's dist port and would clash
with listeners placed there, which is why the default base port is 27672
(below the kernel's default ephemeral range, 32768-60999, so no outgoing
connection can take the port of a node that is down). epmd is shared with
any other Erlang node of the machine and is never stopped.

Port layout for node ``i`` (0, 1, 2) and base ``B`` (``RHA_TEST_BASE_PORT``)::

    AMQP B+i   TLS B+10+i   management B+20+i   Erlang dist B+30+i
    rabbitmqctl dist range B+40 .. B+59

``start`` kills what an earlier run of *our* nodes left behind (found through
the pid files and through a marker variable, ``RHA_TEST_NODE``, in the
environment of every process we spawn; nothing without that marker is ever
signalled), wipes the node directories, boots the three nodes in parallel,
joins nodes 2 and 3 to node 1 and waits until all three are running and
clustered. Restarting one node after ``kill`` keeps its data, so it rejoins on
its own; a node that comes back alone is reset and joined again.

``stop`` is a SIGKILL of every process carrying our marker: the data is
throwaway, and the next ``start`` wipes it.

Health is read from the management HTTP API (fast, no Erlang VM per call);
``rabbitmqctl`` is used for boot, join and ``cluster_status``. A lock
(``flock`` on ``<data dir>/lock``) gives one user at a time, CLI or pytest
session, exclusive use of a cluster; a second one fails at once with the pid
of the holder, or waits up to ``RHA_TEST_LOCK_TIMEOUT`` seconds if set.

Environment variables: ``RHA_TEST_BASE_PORT`` (27672),
``RHA_TEST_NODE_PREFIX`` (``rhatest``; node names ``rhatest1@localhost``...),
``RHA_TEST_DATA_DIR`` (``/tmp/rha-test-cluster``), ``RHA_TEST_START_TIMEOUT``
(seconds, 120), ``RHA_TEST_LOCK_TIMEOUT`` (seconds, 0).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

LOG = logging.getLogger(__name__)

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN / "rabbitmqctl"
APT_PACKAGES = ("rabbitmq-server", "iptables", "openssl")
FIREWALL_COMMENT = "rha-test"
MARKER_VAR = "RHA_TEST_NODE"
USER = PASSWORD = "guest"
#: The user a client certificate (CN=rha-test-client) logs in as with EXTERNAL.
TLS_EXTERNAL_USER = "rha-test-client"
HOST = "127.0.0.1"
# iptables lives in /usr/sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join(filter(None, [
    os.environ.get("PATH"), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]))

# Ports of a default RabbitMQ installation (and the default rabbitmqctl
# distribution range) that our nodes must never take.
_FOREIGN_PORTS = frozenset(
    {4369, 1883, 5551, 5552, 5671, 5672, 5673, 5674, 8883, 15671, 15672,
     15674, 15675, 15692, 25672, 61613, 61614, *range(35672, 35683)})
_OFFSET_TLS, _OFFSET_MGMT, _OFFSET_DIST, _OFFSET_CTL = 10, 20, 30, 40
_CTL_PORTS = 20
_NODE_COUNT = 3
#: RabbitMQ 3.10's defaults, restored after a consumer-timeout fault.
DEFAULT_CONSUMER_TIMEOUT_MS = 1_800_000
DEFAULT_CHANNEL_TICK_MS = 60_000
#: The watermark of a stock broker, and one so low the alarm is raised at once.
DEFAULT_WATERMARK = 0.4
ALARM_WATERMARK = 0.0000001

#: Where the RabbitMQ 4 root file system is built once and kept.
DEFAULT_ROOTFS = Path("/var/cache/rabbit-ha-test/trixie")
ROOTFS_SUITE = "trixie"
ROOTFS_READY = ".rha-rootfs-ready"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: Deprecated features a RabbitMQ 4 test cluster refuses, as later releases do
#: by default (classic queue mirroring is gone altogether in 4.0).
DENIED_DEPRECATED_FEATURES = ("transient_nonexcl_queues", "global_qos")

T = TypeVar("T")


def _major_version(value: str) -> str:
    """"4", "4.0" or "4.0.5" -> "4"; "3.10" -> "3"."""
    return value.strip().split(".", 1)[0]


class ClusterError(RuntimeError):
    """The test cluster could not be installed, started, repaired or queried."""


class NodeExited(ClusterError):
    """A node's VM exited while it was starting."""


class ClusterBusy(ClusterError):
    """Another run holds the lock of this cluster's data directory."""


class ManagementApiError(ClusterError):
    """The management HTTP API answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:300]}")
        self.status = status


# --------------------------------------------------------------------------
# Settings and nodes
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    """Where and how the cluster runs; ``from_env()`` reads RHA_TEST_*."""

    base_port: int = 27672
    node_prefix: str = "rhatest"
    data_dir: Path = Path("/tmp/rha-test-cluster")
    start_timeout: float = 120.0
    lock_timeout: float = 0.0
    #: Major version of the broker: "3" (the machine's RabbitMQ 3.10) or "4"
    #: (RabbitMQ 4.0 of Debian trixie, run from a cached chroot).
    rabbitmq: str = "3"
    rootfs: Path = DEFAULT_ROOTFS

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()
        try:
            settings = cls(
                base_port=int(env.get("RHA_TEST_BASE_PORT", defaults.base_port)),
                node_prefix=env.get("RHA_TEST_NODE_PREFIX", defaults.node_prefix),
                data_dir=Path(env.get("RHA_TEST_DATA_DIR", str(defaults.data_dir))),
                start_timeout=float(env.get("RHA_TEST_START_TIMEOUT",
                                            defaults.start_timeout)),
                lock_timeout=float(env.get("RHA_TEST_LOCK_TIMEOUT",
                                           defaults.lock_timeout)),
                rabbitmq=_major_version(env.get("RHA_TEST_RABBITMQ", defaults.rabbitmq)),
                rootfs=Path(env.get("RHA_TEST_ROOTFS", str(defaults.rootfs))),
            )
        except ValueError as exc:
            raise ClusterError(f"bad RHA_TEST_* setting: {exc}") from exc
        settings.validate()
        return settings

    def validate(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,30}", self.node_prefix):
            raise ClusterError(
                f"RHA_TEST_NODE_PREFIX={self.node_prefix!r}: use lower-case letters, "
                "digits, '-' or '_'")
        if self.node_prefix.startswith("rabbit"):
            raise ClusterError("RHA_TEST_NODE_PREFIX must not start with 'rabbit': "
                               "those names belong to regular brokers")
        ports = self.all_ports()
        if min(ports) < 1024 or max(ports) > 65535:
            raise ClusterError(f"RHA_TEST_BASE_PORT={self.base_port} puts ports "
                               "outside 1024-65535")
        clash = sorted(set(ports) & _FOREIGN_PORTS)
        if clash:
            raise ClusterError(f"RHA_TEST_BASE_PORT={self.base_port} would use ports "
                               f"{clash} of a default RabbitMQ installation")
        if not self.data_dir.is_absolute():
            raise ClusterError("RHA_TEST_DATA_DIR must be an absolute path")
        if self.rabbitmq not in ("3", "4"):
            raise ClusterError(f"RHA_TEST_RABBITMQ={self.rabbitmq!r}: use 3 (RabbitMQ "
                               "3.10 of this machine) or 4 (RabbitMQ 4.0 from a chroot)")
        if not self.rootfs.is_absolute():
            raise ClusterError("RHA_TEST_ROOTFS must be an absolute path")

    @property
    def in_chroot(self) -> bool:
        return self.rabbitmq == "4"

    @property
    def ctl_port_range(self) -> tuple[int, int]:
        low = self.base_port + _OFFSET_CTL
        return low, low + _CTL_PORTS - 1

    def all_ports(self) -> list[int]:
        low, high = self.ctl_port_range
        return [self.base_port + off + i
                for off in (0, _OFFSET_TLS, _OFFSET_MGMT, _OFFSET_DIST)
                for i in range(_NODE_COUNT)] + list(range(low, high + 1))


@dataclasses.dataclass(eq=False)
class Node:
    """One broker node: its name, ports and files; ``pid`` is looked up live."""

    index: int
    name: str
    port: int
    tls_port: int
    mgmt_port: int
    dist_port: int
    dir: Path
    marker: str
    host: str = HOST

    @property
    def short_name(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def address(self) -> str:
        """``host:port`` of the AMQP listener, as py-amqp's ``host`` wants it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@{self.host}:{self.port}//"

    @property
    def config_file(self) -> Path:
        return self.dir / "rabbitmq.conf"

    @property
    def pid_file(self) -> Path:
        return self.dir / "beam.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "log" / f"{self.name}.log"

    @property
    def stdout_file(self) -> Path:
        return self.dir / "stdout.log"

    @property
    def pid(self) -> int | None:
        """The live ``beam.smp`` pid of this node, or None."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            if _process_marker(pid) == self.marker and _process_comm(pid) == "beam.smp":
                return pid
        # Not written yet (early boot) or stale: look at the processes.
        for pid, (marker, comm) in _marked_processes().items():
            if marker == self.marker and comm == "beam.smp":
                return pid
        return None

    def __repr__(self) -> str:
        return (f"Node({self.name}, amqp={self.port}, tls={self.tls_port}, "
                f"mgmt={self.mgmt_port}, pid={self.pid})")


@dataclasses.dataclass(frozen=True)
class TlsMaterial:
    """Files of a throwaway CA; ``wrong_ca_file`` is an unrelated CA."""

    dir: Path

    @property
    def ca_file(self) -> str:
        return str(self.dir / "ca.pem")

    @property
    def server_cert(self) -> str:
        return str(self.dir / "server.pem")

    @property
    def server_key(self) -> str:
        return str(self.dir / "server.key")

    @property
    def client_cert(self) -> str:
        return str(self.dir / "client.pem")

    @property
    def client_key(self) -> str:
        return str(self.dir / "client.key")

    @property
    def wrong_ca_file(self) -> str:
        return str(self.dir / "wrong-ca.pem")

    def ensure(self) -> None:
        """Create the CA, server, client and wrong-CA files unless present."""
        files = (self.ca_file, self.server_cert, self.server_key, self.client_cert,
                 self.client_key, self.wrong_ca_file)
        if all(Path(f).is_file() for f in files):
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_ca(self.dir / "ca", "rha-test-ca")
        _make_ca(self.dir / "wrong-ca", "rha-test-wrong-ca")
        _make_leaf(self.dir / "server", self.dir / "ca", "localhost",
                   "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                   "extendedKeyUsage=serverAuth\n")
        _make_leaf(self.dir / "client", self.dir / "ca", TLS_EXTERNAL_USER,
                   "extendedKeyUsage=clientAuth\n")
        LOG.info("created test TLS material in %s", self.dir)


def _openssl(*args: str) -> None:
    _run(["openssl", *args], timeout=60)


def _make_ca(stem: Path, common_name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
             "-keyout", f"{stem}.key", "-out", f"{stem}.pem", "-subj", f"/CN={common_name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(f"{stem}.key", 0o600)


def _make_leaf(stem: Path, ca: Path, common_name: str, extensions: str) -> None:
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key",
             "-out", f"{stem}.csr", "-subj", f"/CN={common_name}")
    ext = Path(f"{stem}.ext")
    ext.write_text("basicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
                   + extensions)
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca}.pem", "-CAkey",
             f"{ca}.key", "-set_serial", str(secrets.randbits(63)), "-days", "3650",
             "-out", f"{stem}.pem", "-extfile", str(ext))
    os.chmod(f"{stem}.key", 0o600)
    Path(f"{stem}.csr").unlink()
    ext.unlink()


# --------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------

def missing_requirements(settings: Settings | None = None) -> list[str]:
    """Packages whose programs are missing on this machine."""
    settings = settings or Settings.from_env()
    missing = []
    if settings.in_chroot:
        # The broker comes from the chroot; the host only builds it.
        if shutil.which("debootstrap", path=SEARCH_PATH) is None:
            missing.append("debootstrap")
    elif not os.access(RABBITMQ_SERVER, os.X_OK):
        missing.append("rabbitmq-server")
    for program in ("iptables", "openssl"):
        if shutil.which(program, path=SEARCH_PATH) is None:
            missing.append(program)
    return missing


def install(settings: Settings | None = None) -> None:
    """Install what is missing with apt-get when root; otherwise explain and fail.

    For RabbitMQ 4 (``RHA_TEST_RABBITMQ=4``) this also builds the trixie root
    file system once (:func:`ensure_rootfs`)."""
    settings = settings or Settings.from_env()
    missing = missing_requirements(settings)
    if missing:
        _apt_install(missing, settings)
    if settings.in_chroot:
        ensure_rootfs(settings.rootfs)


def _apt_install(missing: list[str], settings: Settings) -> None:
    packages = list(missing)
    if not settings.in_chroot:
        packages = sorted(set(packages) | set(APT_PACKAGES))
    command = "apt-get update && apt-get install -y " + " ".join(packages)
    if os.geteuid() != 0:
        raise ClusterError(f"missing: {', '.join(missing)}. Install with: sudo sh -c "
                           f"'{command}' (the tests also need root for iptables)")
    LOG.info("installing %s with apt-get", ", ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    _run(["apt-get", *lock_wait, "update"], env=env, timeout=900)
    # The package's attempt to start its own service fails without an init
    # system; the install itself succeeds, so the exit status is what counts.
    _run(["apt-get", *lock_wait, "install", "-y", "--no-install-recommends",
          *packages], env=env, timeout=1800)
    still = missing_requirements(settings)
    if still:
        raise ClusterError(f"apt-get install finished but {', '.join(still)} "
                           "is still missing")


# --------------------------------------------------------------------------
# RabbitMQ 4 from a Debian trixie chroot
# --------------------------------------------------------------------------
#
# Debian 12 packages RabbitMQ 3.10; trixie packages 4.0 with Erlang 27, whose
# libc would replace the host's. So the broker runs from a minimal trixie root
# file system, built once with debootstrap and kept (a marker file says it is
# complete; a second run reuses it). Every command run in it goes through
# ``unshare --mount``: /proc, /dev and the cluster's data directory are
# bind-mounted into the chroot in a private mount namespace, at the same
# paths, so pid files, logs, TLS files and the Erlang cookie are where the
# host expects them, and the mounts vanish with the process: nothing is ever
# left mounted under the cached tree (which ``rm -rf`` could then follow into
# the host's /dev). The chroot shares the host's network: its nodes listen on
# loopback, use the host's epmd, and iptables rules apply to them as to 3.10.

# $1 root file system, $2 data directory (may be empty), then the command.
_CHROOT_SCRIPT = r"""
set -e
root=$1; data=$2; shift 2
mount --bind /proc "$root/proc"
mount --rbind /dev "$root/dev"
if [ -n "$data" ]; then
    mkdir -p "$root$data"
    mount --bind "$data" "$root$data"
fi
exec chroot "$root" "$@"
"""


def chroot_command(rootfs: Path, data_dir: Path | None, args: Sequence[str]) -> list[str]:
    """``args`` run inside ``rootfs`` with /proc, /dev and ``data_dir`` mounted."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _CHROOT_SCRIPT,
            "chroot-run", str(rootfs), str(data_dir or ""), *args]


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line format)."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"),
                  *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
                  *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in candidates:
        with contextlib.suppress(OSError):
            for match in re.finditer(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)",
                                     path.read_text()):
                uri = match.group(1).rstrip("/")
                if uri.startswith("http") and uri.endswith("/debian"):
                    return uri
    return DEFAULT_MIRROR


def rootfs_ready(rootfs: Path) -> bool:
    return (rootfs / ROOTFS_READY).is_file()


def ensure_rootfs(rootfs: Path = DEFAULT_ROOTFS) -> Path:
    """Build the trixie root file system with RabbitMQ 4 unless already built.

    Built in ``<rootfs>.partial`` and renamed when complete, under a lock, so
    an interrupted build is redone and two runs never build at once."""
    if rootfs_ready(rootfs):
        return rootfs
    if os.geteuid() != 0:
        raise ClusterError(f"{rootfs} is not built and building it needs root "
                           "(debootstrap, chroot)")
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    with ClusterLock(rootfs.parent, timeout=1800, name=f"{rootfs.name}.lock"):
        if rootfs_ready(rootfs):
            return rootfs
        began = time.monotonic()
        partial = rootfs.with_name(rootfs.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(rootfs, ignore_errors=True)
        mirror = debian_mirror()
        LOG.info("building the %s root file system in %s from %s (once; about a minute)",
                 ROOTFS_SUITE, rootfs, mirror)
        env = dict(os.environ, PATH=SEARCH_PATH, DEBIAN_FRONTEND="noninteractive",
                   LANG="C.UTF-8", LC_ALL="C.UTF-8")
        _run(["debootstrap", "--variant=minbase", ROOTFS_SUITE, str(partial), mirror],
             env=env, timeout=1800)
        # No init system in there: tell the package scripts not to start services.
        policy = partial / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        _run(chroot_command(partial, None, [
            "sh", "-c", "apt-get -q update && apt-get -q install -y --no-install-recommends "
                        "rabbitmq-server && apt-get clean"]), env=env, timeout=1800)
        if not os.access(partial / str(RABBITMQ_SERVER).lstrip("/"), os.X_OK):
            raise ClusterError(f"rabbitmq-server is not in {partial} after apt-get install")
        version = _run(chroot_command(partial, None, [
            "dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"]), timeout=60).stdout
        (partial / ROOTFS_READY).write_text(f"rabbitmq-server {version}\n")
        partial.rename(rootfs)
        LOG.info("built %s (rabbitmq-server %s) in %.0fs", rootfs, version,
                 time.monotonic() - began)
    return rootfs


# --------------------------------------------------------------------------
# Firewall rules (iptables on loopback)
# --------------------------------------------------------------------------

def _iptables(*args: str) -> str:
    binary = shutil.which("iptables", path=SEARCH_PATH)
    if binary is None:
        raise ClusterError("iptables is not installed (run: tools/rabbit_cluster.py install)")
    return _run([binary, "-w", "10", *args], timeout=30).stdout


def drop_rule_specs(port_a: int, port_b: int,
                    comment: str = FIREWALL_COMMENT) -> list[list[str]]:
    """The two INPUT rules that silently drop one loopback TCP connection."""
    return [["-i", "lo", "-p", "tcp", "--sport", str(src), "--dport", str(dst),
             "-m", "comment", "--comment", comment, "-j", "DROP"]
            for src, dst in ((port_a, port_b), (port_b, port_a))]


def add_rule(spec: Sequence[str]) -> None:
    _iptables("-I", "INPUT", *spec)


def delete_rule(spec: Sequence[str]) -> None:
    _iptables("-D", "INPUT", *spec)


def tagged_rules(comment: str = FIREWALL_COMMENT) -> list[list[str]]:
    """INPUT rules carrying our comment, as specs ``delete_rule`` accepts."""
    rules = []
    for line in _iptables("-S", "INPUT").splitlines():
        words = shlex.split(line)
        if words[:2] != ["-A", "INPUT"]:
            continue
        with contextlib.suppress(ValueError, IndexError):
            if words[words.index("--comment") + 1] == comment:
                rules.append(words[2:])
    return rules


def remove_tagged_rules(ports: Iterable[int] | None = None,
                        comment: str = FIREWALL_COMMENT) -> int:
    """Delete our rules (only those touching ``ports`` if given); return how many."""
    wanted = None if ports is None else {str(p) for p in ports}
    removed = 0
    for spec in tagged_rules(comment):
        touched = {spec[i + 1] for i, w in enumerate(spec[:-1]) if w in ("--sport", "--dport")}
        if wanted is None or touched & wanted:
            delete_rule(spec)
            removed += 1
    if removed:
        LOG.info("removed %d leftover firewall rule(s) tagged %r", removed, comment)
    return removed


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def _run(args: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(args), env=env, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise ClusterError(f"{args[0]} not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(args[:4])} timed out after {timeout:.0f}s") from exc
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(args[:6])} failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-1500:]}")
    return result


def _process_comm(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ..." - comm may contain spaces and parentheses.
    comm, _, rest = stat.partition("(")[2].rpartition(")")
    return None if rest.split()[:1] == ["Z"] else comm


def _process_marker(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{MARKER_VAR}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None


def _marked_processes() -> dict[int, tuple[str, str]]:
    """Live processes carrying our marker: pid -> (marker, comm)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        marker = _process_marker(pid)
        if marker is None:
            continue
        comm = _process_comm(pid)
        # epmd is started by the first node of the machine, inherits our
        # environment, and may serve other brokers: never ours to kill.
        if comm is not None and comm != "epmd":
            found[pid] = (marker, comm)
    return found


def _kill(pids: Iterable[int], timeout: float = 15.0) -> None:
    pids = set(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_process_comm(p) is not None for p in pids):
        if time.monotonic() > deadline:
            raise ClusterError(f"processes {sorted(pids)} survived SIGKILL")
        time.sleep(0.05)


#: pid -> node name of the nodes this process froze; thawed at exit.
_FROZEN: dict[int, str] = {}
_THAW_REGISTERED = False


def _sigcont(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    _FROZEN.pop(pid, None)


def _thaw_frozen() -> None:
    for pid in list(_FROZEN):
        _sigcont(pid)


def _register_thaw_at_exit() -> None:
    """A node frozen by this process is thawed when it exits, however it ends
    (SIGTERM/SIGHUP handlers of :func:`stopped_on_exit` run atexit code too)."""
    global _THAW_REGISTERED
    if not _THAW_REGISTERED:
        atexit.register(_thaw_frozen)
        _THAW_REGISTERED = True


def _epmd_names(timeout: float = 1.0) -> dict[str, int]:
    """Names registered in the local epmd (empty if epmd does not run)."""
    port = int(os.environ.get("ERL_EPMD_PORT", "4369"))
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"\x00\x01n")  # NAMES_REQ
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return {}
    text = b"".join(chunks)[4:].decode(errors="replace")
    return {m[1]: int(m[2]) for m in re.finditer(r"name (\S+) at port (\d+)", text)}


def listening(port: int) -> bool:
    """True if a socket listens on 127.0.0.1:port or 0.0.0.0:port.

    Read from /proc/net/tcp rather than by connecting, which would leave a
    "closed before handshake" line in the broker log for every probe.
    """
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] in wanted and f[3] == "0A" for f in (line.split() for line in lines))


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy; ClusterError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _parallel(function: Callable[[T], Any], items: Sequence[T]) -> None:
    if len(items) <= 1:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        for future in [pool.submit(function, item) for item in items]:
            future.result()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no file)"


# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------

class Cluster:
    """Three local nodes: lifecycle, faults, health and management API helpers.

    Methods that take ``node`` accept a :class:`Node`, its index in
    ``nodes`` (0-based) or its name.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.data_dir = self.settings.data_dir
        self.tls = TlsMaterial(self.data_dir / "tls")
        base = self.settings.base_port
        self.nodes = [
            Node(index=i, name=f"{self.settings.node_prefix}{i + 1}@localhost",
                 port=base + i, tls_port=base + _OFFSET_TLS + i,
                 mgmt_port=base + _OFFSET_MGMT + i, dist_port=base + _OFFSET_DIST + i,
                 dir=self.data_dir / "nodes" / f"{self.settings.node_prefix}{i + 1}",
                 marker=f"{self.data_dir}::{self.settings.node_prefix}{i + 1}@localhost")
            for i in range(_NODE_COUNT)]
        self._frozen: set[str] = set()

    def __repr__(self) -> str:
        return f"Cluster({self.data_dir}, nodes={[n.name for n in self.nodes]})"

    # -- addressing ---------------------------------------------------------

    def node(self, ref: Node | int | str) -> Node:
        if isinstance(ref, Node):
            return ref
        if isinstance(ref, int):
            return self.nodes[ref]
        for node in self.nodes:
            if ref in (node.name, node.short_name):
                return node
        raise KeyError(f"no node {ref!r} in {self!r}")

    def url(self, nodes: Iterable[Node | int | str] | None = None) -> str:
        """oslo.messaging transport URL naming every node (or the given ones)."""
        chosen = self.nodes if nodes is None else [self.node(n) for n in nodes]
        hosts = ",".join(f"{USER}:{PASSWORD}@{n.host}:{n.port}" for n in chosen)
        return f"rabbit://{hosts}/"

    def amqp_url(self, node: Node | int | str) -> str:
        return self.node(node).url

    def client_ports(self) -> set[int]:
        """Ports clients connect to: AMQP, TLS and management of every node."""
        return {p for n in self.nodes for p in (n.port, n.tls_port, n.mgmt_port)}

    # -- whole-cluster lifecycle -------------------------------------------

    def bootstrap(self, owner: str = "cli") -> float:
        """Start a fresh cluster (after killing leftovers); return seconds taken."""
        began = time.monotonic()
        self.shutdown()
        busy = [p for p in self.settings.all_ports()[:4 * _NODE_COUNT] if not _port_is_free(p)]
        if busy:
            raise ClusterError(
                f"ports {busy} are already in use by processes that are not our nodes; "
                "set RHA_TEST_BASE_PORT to another base (see `ss -tlnp`)")
        if self.settings.in_chroot and not rootfs_ready(self.settings.rootfs):
            raise ClusterError(f"{self.settings.rootfs} is not built: run "
                               "RHA_TEST_RABBITMQ=4 tools/rabbit_cluster.py install")
        self._prepare_files()
        try:
            for node in self.nodes:
                self._spawn(node)
            _parallel(lambda n: self._await_boot(n, spawned=True), self.nodes)
            seed = self.nodes[0]
            if self.settings.in_chroot:
                # RabbitMQ 4.0: two nodes joining at once can crash the
                # joiner's Mnesia schema commit; one after the other is safe.
                for node in self.nodes[1:]:
                    self._join(node, seed)
            else:
                # 3.10: joining both at once is safe (join_cluster serialises
                # on the seed).
                _parallel(lambda n: self._join(n, seed), self.nodes[1:])
            self.wait_healthy(self.settings.start_timeout)
        except BaseException:
            LOG.error("cluster start failed; stopping what was started")
            with contextlib.suppress(Exception):
                self.shutdown()
            raise
        self._write_state(owner)
        took = time.monotonic() - began
        LOG.info("cluster of %s started in %.1fs", ", ".join(n.name for n in self.nodes), took)
        return took

    def shutdown(self) -> None:
        """SIGKILL every process of our nodes and drop our firewall rules."""
        self.thaw_all()
        prefix = f"{self.data_dir}::"
        pids = {pid for pid, (marker, _) in _marked_processes().items()
                if marker.startswith(prefix)}
        for node in self.nodes:
            with contextlib.suppress(OSError, ValueError):
                pid = int(node.pid_file.read_text().strip())
                if _process_marker(pid) == node.marker:
                    pids.add(pid)
        if pids:
            LOG.info("killing %d process(es) of our nodes", len(pids))
            _kill(pids)
        if shutil.which("iptables", path=SEARCH_PATH):
            remove_tagged_rules(self.client_ports())
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "state.json").unlink()

    def thaw_all(self) -> None:
        """SIGCONT every beam.smp of our nodes (frozen or not: harmless)."""
        prefix = f"{self.data_dir}::"
        for pid, (marker, comm) in _marked_processes().items():
            if marker.startswith(prefix) and comm == "beam.smp":
                _sigcont(pid)
        self._frozen.clear()

    def _restore_defaults(self) -> None:
        """Undo runtime settings a crashed fault may have left (cheap when none)."""
        leftovers = [n for n in self.nodes if (n.dir / "advanced.config").exists()]
        if leftovers:
            LOG.warning("a consumer timeout was left set; restoring the default")
            with contextlib.suppress(ClusterError):
                self.set_consumer_timeout(None)
        with contextlib.suppress(ClusterError):
            for name in self.memory_alarms():
                LOG.warning("%s has a memory alarm; restoring its watermark", name)
                self.set_memory_watermark(name, DEFAULT_WATERMARK)

    def running_version(self) -> str | None:
        """Major version ("3", "4") of the running cluster, from state.json."""
        try:
            return str(json.loads((self.data_dir / "state.json").read_text()).get("rabbitmq", "3"))
        except (OSError, ValueError):
            return None

    def started_by(self) -> str | None:
        """Who started the running cluster ("cli" or "pytest"), from state.json."""
        try:
            return str(json.loads((self.data_dir / "state.json").read_text())["owner"])
        except (OSError, ValueError, KeyError):
            return None

    # -- node faults and recovery ------------------------------------------

    def kill(self, node: Node | int | str, timeout: float = 15.0) -> None:
        """SIGKILL the node's beam.smp; return once its AMQP port refuses connections."""
        node = self.node(node)
        pid = node.pid
        if pid is not None:
            LOG.info("killing %s (pid %d)", node.name, pid)
            _kill([pid], timeout)
        self._wait_down(node, timeout)

    def kill_all(self, timeout: float = 15.0) -> None:
        """SIGKILL every node at once; data on disk is kept for ``start_all``.

        RabbitMQ 3.10 caveat: a quorum queue declared less than about a second
        before all its members die can come back without a leader (its Ra
        servers are registered asynchronously), and then hangs every client
        operation; ``ensure_healthy`` can still delete it.

        Queues, exchanges and bindings declared in the last two seconds or so
        may still sit in the nodes' metadata log buffers and be lost; call
        :meth:`sync_metadata` first when they must survive.
        """
        pids = [p for p in (n.pid for n in self.nodes) if p is not None]
        LOG.info("killing all nodes (pids %s)", pids)
        _kill(pids, timeout)
        for node in self.nodes:
            self._wait_down(node, timeout)

    def sync_metadata(self) -> None:
        """Make every running node write its metadata log (Mnesia) to disk now.

        A node writes committed declarations to its transaction log through a
        buffer flushed every couple of seconds; a SIGKILL before that loses
        them (a durable queue declared just before ``kill_all`` is gone after
        ``start_all``, its persistent messages with it). With the Khepri
        metadata store this is harmless: Khepri syncs on commit."""
        running = next((n for n in self.nodes if n.pid is not None), None)
        if running is None:
            raise ClusterError("no node is running: nothing to sync")
        out = self.rabbitmqctl(running, "eval", "rpc:multicall(mnesia, sync_log, []).")
        if "badrpc" in out or "error" in out:
            raise ClusterError(f"mnesia:sync_log() failed on some node: {out.strip()}")

    @staticmethod
    def _wait_down(node: Node, timeout: float) -> None:
        wait_for(lambda: not listening(node.port), timeout, f"{node.name} to go down")

    def start(self, node: Node | int | str) -> None:
        """(Re)start one node, make sure it is clustered, wait until all are healthy."""
        self._start_nodes([self.node(node)])

    def start_all(self) -> None:
        self._start_nodes(self.nodes)

    def _start_nodes(self, nodes: list[Node]) -> None:
        for attempt in (1, 2):
            dead = [n for n in nodes if n.pid is None]
            for node in dead:
                self._spawn(node)
            spawned = set(map(id, dead))

            def boot(node: Node, spawned: set[int] = spawned) -> None:
                self._await_boot(node, spawned=id(node) in spawned)

            try:
                _parallel(boot, nodes)
                break
            except ClusterError as error:
                if attempt == 2 or (len(nodes) < 2 and not isinstance(error, NodeExited)):
                    raise
                # RabbitMQ 3.10 nodes started together can wait on each other's
                # Mnesia tables until they give up when one of them fails to
                # boot; and a RabbitMQ 4.0 node restarted after a SIGKILL was
                # once SIGKILLed itself while booting, by no one here (its
                # stdout ends in "Killed"). Kill what is left and start them
                # over, once; the first failure stays in the log.
                LOG.warning("nodes did not boot (%s); starting them over:\n%s",
                            str(error).splitlines()[0], error)
                markers = {n.marker for n in nodes}
                _kill([pid for pid, (marker, _) in _marked_processes().items() if marker in markers],
                      15.0)
                for node in nodes:
                    self._wait_down(node, 15.0)
        for node in nodes:
            self._ensure_member(node)
        self.wait_healthy(self.settings.start_timeout)

    # -- broker-side faults ------------------------------------------------

    def freeze(self, node: Node | int | str) -> int:
        """SIGSTOP the node's beam.smp; return its pid. Undo with :meth:`thaw`.

        A frozen node keeps its listening sockets: the kernel still completes
        TCP handshakes into the accept backlog, but nothing is read or
        answered, neither AMQP nor the management API, and its peers only
        notice after ``net_ticktime``. Until thawed, :meth:`api` asks the
        other nodes. :func:`thaw_all` (run at exit too) undoes every freeze.
        """
        node = self.node(node)
        pid = node.pid
        if pid is None:
            raise ClusterError(f"{node.name} is not running; cannot freeze it")
        _FROZEN[pid] = node.name
        _register_thaw_at_exit()
        os.kill(pid, signal.SIGSTOP)
        self._frozen.add(node.name)
        LOG.info("froze %s (pid %d)", node.name, pid)
        return pid

    def thaw(self, node: Node | int | str) -> None:
        """SIGCONT the node's beam.smp (idempotent)."""
        node = self.node(node)
        for pid, name in list(_FROZEN.items()):
            if name == node.name:
                _sigcont(pid)
        pid = node.pid
        if pid is not None:
            _sigcont(pid)
        self._frozen.discard(node.name)
        LOG.info("thawed %s", node.name)

    @contextlib.contextmanager
    def frozen(self, node: Node | int | str, seconds: float | None = None) -> Iterator[int]:
        """Freeze ``node`` for the block (and ``seconds`` more if given); always thaw."""
        pid = self.freeze(node)
        try:
            yield pid
            if seconds:
                time.sleep(seconds)
        finally:
            self.thaw(node)

    def is_frozen(self, node: Node | int | str) -> bool:
        return self.node(node).name in self._frozen

    def rabbit_env(self, node: Node | int | str, key: str) -> str:
        """``application:get_env(rabbit, KEY)`` of a node, as Erlang prints it."""
        return self.rabbitmqctl(node, "eval",
                                f"application:get_env(rabbit, {key}).", timeout=30).strip()

    def set_rabbit_env(self, key: str, value: int, nodes: Iterable[Node | int | str] | None = None,
                       ) -> None:
        """``application:set_env(rabbit, KEY, VALUE)`` on running nodes (lost on restart)."""
        chosen = self.nodes if nodes is None else [self.node(n) for n in nodes]
        for node in chosen:
            if node.pid is None or node.name in self._frozen:
                continue
            self.rabbitmqctl(node, "eval",
                             f"application:set_env(rabbit, {key}, {int(value)}).", timeout=30)

    def set_consumer_timeout(self, timeout_ms: int | None, tick_ms: int | None = None) -> None:
        """Make the broker close a channel whose delivery stays unacked ``timeout_ms``.

        RabbitMQ 3.10 checks ``consumer_timeout`` on each channel's tick
        (``channel_tick_interval``, 60 s by default), and a channel reads both
        when it opens: only channels opened after this call get them. Both are
        also written to every node's ``advanced.config``, so a node restarted
        later keeps them. ``None`` restores the defaults (30 min, 60 s).
        ``channel_tick_interval`` must never be unset: a channel opened
        without it crashes on open (the client sees a connection reset).
        """
        timeout = DEFAULT_CONSUMER_TIMEOUT_MS if timeout_ms is None else int(timeout_ms)
        tick = DEFAULT_CHANNEL_TICK_MS if tick_ms is None else int(tick_ms)
        if timeout_ms is None and tick_ms is None:
            for node in self.nodes:
                with contextlib.suppress(FileNotFoundError):
                    (node.dir / "advanced.config").unlink()
        else:
            for node in self.nodes:
                (node.dir / "advanced.config").write_text(
                    f"[{{rabbit, [{{consumer_timeout, {timeout}}}, "
                    f"{{channel_tick_interval, {tick}}}]}}].\n")
        self.set_rabbit_env("consumer_timeout", timeout)
        self.set_rabbit_env("channel_tick_interval", tick)
        LOG.info("consumer_timeout %d ms, channel tick %d ms", timeout, tick)

    @contextlib.contextmanager
    def consumer_timeout(self, timeout_ms: int = 2000, tick_ms: int = 500) -> Iterator[None]:
        """:meth:`set_consumer_timeout` for the block; the defaults come back after."""
        try:
            self.set_consumer_timeout(timeout_ms, tick_ms)
            yield
        finally:
            self.set_consumer_timeout(None)

    def set_memory_watermark(self, node: Node | int | str, fraction: float) -> None:
        """``rabbitmqctl set_vm_memory_high_watermark`` (lost on restart)."""
        self.rabbitmqctl(node, "set_vm_memory_high_watermark", repr(float(fraction)), timeout=30)

    @contextlib.contextmanager
    def memory_alarm(self, node: Node | int | str = 0) -> Iterator[None]:
        """Raise a memory alarm on ``node`` for the block; the broker then
        blocks every publishing connection of the cluster
        (``connection.blocked``). The watermark goes back to 0.4 after,
        also on failure (a node restarted meanwhile has it already)."""
        node = self.node(node)
        try:
            self.set_memory_watermark(node, ALARM_WATERMARK)
            yield
        finally:
            if node.pid is not None and node.name not in self._frozen:
                self.set_memory_watermark(node, DEFAULT_WATERMARK)

    def memory_alarms(self) -> list[str]:
        """Nodes that report a memory alarm (management API)."""
        return [n["name"] for n in self.api("GET", "/api/nodes") if n.get("mem_alarm")]

    def delete_exchange(self, name: str, vhost: str = "/") -> dict[str, Any] | None:
        """Delete an exchange; return what :meth:`restore_exchange` needs (None if absent).

        Publishing to it afterwards makes the broker close the publisher's
        channel with 404 NOT_FOUND; the bindings that had it as source go too.
        """
        definition = self.api("GET", f"/api/exchanges/{_q(vhost)}/{_q(name)}", missing_ok=True)
        if definition is None:
            return None
        bindings = self.api("GET", f"/api/exchanges/{_q(vhost)}/{_q(name)}/bindings/source")
        self.api("DELETE", f"/api/exchanges/{_q(vhost)}/{_q(name)}", missing_ok=True)
        LOG.info("deleted exchange %r (%d bindings)", name, len(bindings))
        return {"definition": definition, "bindings": bindings}

    def restore_exchange(self, saved: dict[str, Any] | None) -> None:
        """Declare a deleted exchange again with its attributes and bindings."""
        if saved is None:
            return
        ex = saved["definition"]
        vhost, name = ex["vhost"], ex["name"]
        self.api("PUT", f"/api/exchanges/{_q(vhost)}/{_q(name)}",
                 {"type": ex["type"], "durable": ex["durable"], "auto_delete": ex["auto_delete"],
                  "internal": ex["internal"], "arguments": ex["arguments"]})
        for binding in saved["bindings"]:
            kind = "q" if binding["destination_type"] == "queue" else "e"
            with contextlib.suppress(ManagementApiError):  # the queue may be gone meanwhile
                self.api("POST", f"/api/bindings/{_q(vhost)}/e/{_q(name)}/{kind}/"
                                 f"{_q(binding['destination'])}",
                         {"routing_key": binding["routing_key"],
                          "arguments": binding["arguments"]})
        LOG.info("restored exchange %r with %d bindings", name, len(saved["bindings"]))

    @contextlib.contextmanager
    def exchange_missing(self, name: str, vhost: str = "/") -> Iterator[dict[str, Any] | None]:
        """The exchange is absent during the block, back with its bindings after."""
        saved = self.delete_exchange(name, vhost)
        try:
            yield saved
        finally:
            self.restore_exchange(saved)

    def tls_url(self, nodes: Iterable[Node | int | str] | None = None,
                scheme: str = "rabbit") -> str:
        """Transport URL of the TLS listeners (``ssl=true`` in the query).

        The server certificate names 127.0.0.1, so hostname verification
        passes; give :meth:`tls_options` with it."""
        chosen = self.nodes if nodes is None else [self.node(n) for n in nodes]
        hosts = ",".join(f"{USER}:{PASSWORD}@{n.host}:{n.tls_port}" for n in chosen)
        return f"{scheme}://{hosts}/?ssl=true"

    def tls_options(self, client_cert: bool = True) -> dict[str, str]:
        """``from_url`` keywords of the library for :meth:`tls_url`."""
        options = {"ssl_ca_file": self.tls.ca_file}
        if client_cert:
            options.update(ssl_cert_file=self.tls.client_cert, ssl_key_file=self.tls.client_key)
        return options

    # -- health -------------------------------------------------------------

    def health_problems(self) -> list[str]:
        """What is wrong with the cluster right now; empty when healthy."""
        problems = [f"{n.name} has no process" for n in self.nodes if n.pid is None]
        try:
            reported = {entry["name"]: entry for entry in self.api("GET", "/api/nodes")}
        except ClusterError as exc:
            return [*problems, f"management API: {exc}"]
        for node in self.nodes:
            entry = reported.get(node.name)
            if entry is None:
                problems.append(f"{node.name} is not a cluster member")
            elif not entry.get("running"):
                problems.append(f"{node.name} is not running")
            elif entry.get("partitions"):
                problems.append(f"{node.name} sees a partition: {entry['partitions']}")
        extra = set(reported) - {n.name for n in self.nodes}
        if extra:
            problems.append(f"unexpected members {sorted(extra)}")
        return problems

    def is_healthy(self) -> bool:
        return not self.health_problems()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while problems := self.health_problems():
            if time.monotonic() > deadline:
                raise ClusterError("cluster not healthy: " + "; ".join(problems))
            time.sleep(0.2)

    def ensure_healthy(self, clean: bool = True) -> None:
        """Repair what is down (restart, rejoin, or rebuild); then delete leftovers.

        Frozen nodes are thawed first; consumer timeout and memory watermark
        go back to their defaults."""
        self.thaw_all()
        self._restore_defaults()
        problems = self.health_problems()
        try:
            if problems:
                LOG.warning("cluster unhealthy (%s); repairing", "; ".join(problems))
                self._start_nodes(self.nodes)
            if clean:
                self.clean()
        except ClusterError as exc:
            LOG.warning("repair failed (%s); re-creating the cluster", exc)
            self.bootstrap(owner=self.started_by() or "pytest")

    def clean(self) -> None:
        """Delete all queues, policies and non-default exchanges; drop our rules."""
        for queue in self.api("GET", "/api/queues?columns=name,vhost"):
            try:
                self.api("DELETE", f"/api/queues/{_q(queue['vhost'])}/{_q(queue['name'])}",
                         missing_ok=True, timeout=5.0)
            except ClusterError as exc:
                # A quorum queue without a leader times out over HTTP;
                # rabbitmqctl gives up waiting for Ra and deletes it anyway.
                LOG.warning("deleting queue %r: %s; retrying with rabbitmqctl",
                            queue["name"], exc)
                running = next((n for n in self.nodes if n.pid is not None), self.nodes[0])
                self.rabbitmqctl(running, "delete_queue", "--vhost", queue["vhost"],
                                 queue["name"], timeout=120)
        for policy in self.api("GET", "/api/policies"):
            self.clear_policy(policy["name"], policy["vhost"])
        for exchange in self.api("GET", "/api/exchanges?columns=name,vhost"):
            if exchange["name"] and not exchange["name"].startswith("amq."):
                self.api("DELETE", f"/api/exchanges/{_q(exchange['vhost'])}/"
                                   f"{_q(exchange['name'])}", missing_ok=True)
        remove_tagged_rules(self.client_ports())

    # -- management API -------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, *,
            node: Node | int | str | None = None, timeout: float = 10.0,
            missing_ok: bool = False) -> Any:
        """Call the management HTTP API of ``node`` (default: first node that answers)."""
        candidates = ([self.node(node)] if node is not None
                      else [n for n in self.nodes if n.name not in self._frozen])
        data = None if body is None else json.dumps(body).encode()
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        last_error: Exception | None = None
        for candidate in candidates:
            request = urllib.request.Request(
                f"http://{candidate.host}:{candidate.mgmt_port}{path}", data=data,
                method=method, headers={"Authorization": f"Basic {token}",
                                        "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    payload = response.read()
                return json.loads(payload) if payload else None
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and missing_ok:
                    return None
                raise ManagementApiError(method, path, exc.code,
                                         exc.read().decode(errors="replace")) from exc
            except urllib.error.URLError as exc:
                if not isinstance(exc.reason, ConnectionError):
                    raise ClusterError(f"{method} {path}: {exc.reason}") from exc
                last_error = exc  # that node is down: ask the next one
            except ConnectionError as exc:  # went down while answering
                last_error = exc
            except (OSError, ValueError) as exc:  # timeout or garbage: no retry
                raise ClusterError(f"{method} {path}: {exc!r}") from exc
        raise ClusterError(f"no management API answered {method} {path}: {last_error}")

    def queue_info(self, name: str, vhost: str = "/") -> dict[str, Any] | None:
        """Management API view of a queue (``node``, ``type``, ``consumers``,
        ``policy``, ``slave_nodes``, ``leader``, ``members``...), None if absent."""
        result: dict[str, Any] | None = self.api(
            "GET", f"/api/queues/{_q(vhost)}/{_q(name)}", missing_ok=True)
        return result

    def delete_queue(self, name: str, vhost: str = "/", missing_ok: bool = False) -> None:
        """Delete through the management API: consumers get ``basic.cancel``."""
        self.api("DELETE", f"/api/queues/{_q(vhost)}/{_q(name)}", missing_ok=missing_ok)

    def connections(self) -> list[dict[str, Any]]:
        """Client connections (``name``, ``node``, ``peer_port``, ``client_properties``...).

        Lags by up to ``collect_statistics_interval`` (1 s here)."""
        result: list[dict[str, Any]] = self.api("GET", "/api/connections")
        return result

    def set_policy(self, name: str, pattern: str, definition: dict[str, Any],
                   apply_to: str = "queues", priority: int = 0, vhost: str = "/") -> None:
        self.api("PUT", f"/api/policies/{_q(vhost)}/{_q(name)}",
                 {"pattern": pattern, "definition": definition, "apply-to": apply_to,
                  "priority": priority})

    def clear_policy(self, name: str, vhost: str = "/") -> None:
        self.api("DELETE", f"/api/policies/{_q(vhost)}/{_q(name)}", missing_ok=True)

    @contextlib.contextmanager
    def external_login(self, vhost: str = "/") -> Iterator[str]:
        """EXTERNAL login offered by every running node during the block.

        A TLS client presenting ``tls.client_cert`` may then log in with the
        EXTERNAL mechanism as :data:`TLS_EXTERNAL_USER` (its CN), a user that
        exists, with all permissions on ``vhost``, for the block only. The
        mechanisms go back to PLAIN and AMQPLAIN after it (and a node that
        restarts reads them from its configuration anyway).
        """
        self.api("PUT", f"/api/users/{_q(TLS_EXTERNAL_USER)}", {"password_hash": "", "tags": ""})
        self.api("PUT", f"/api/permissions/{_q(vhost)}/{_q(TLS_EXTERNAL_USER)}",
                 {"configure": ".*", "write": ".*", "read": ".*"})
        running = [n for n in self.nodes if n.pid is not None]
        try:
            for node in running:
                self.rabbitmqctl(node, "eval", "application:set_env(rabbit, auth_mechanisms, "
                                 "['PLAIN', 'AMQPLAIN', 'EXTERNAL']).")
            yield TLS_EXTERNAL_USER
        finally:
            for node in running:
                with contextlib.suppress(ClusterError):
                    self.rabbitmqctl(node, "eval", "application:set_env(rabbit, auth_mechanisms, "
                                     "['PLAIN', 'AMQPLAIN']).")
            with contextlib.suppress(ClusterError):
                self.api("DELETE", f"/api/users/{_q(TLS_EXTERNAL_USER)}", missing_ok=True)

    # -- logs and rabbitmqctl -----------------------------------------------

    def missed_heartbeat_closes(self, node: Node | int | str | None = None) -> int:
        """How many "missed heartbeats from client" closes the node log(s) show."""
        chosen = self.nodes if node is None else [self.node(node)]
        total = 0
        for each in chosen:
            with contextlib.suppress(FileNotFoundError), open(each.log_file, errors="replace") as log:
                total += sum("missed heartbeats from client" in line for line in log)
        return total

    def rabbitmqctl(self, node: Node | int | str, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` with our cookie; return its stdout."""
        node = self.node(node)
        return _run(self._command([str(RABBITMQCTL), "-n", node.name, *args]),
                    env=self._ctl_env(), timeout=timeout).stdout

    def cluster_status(self, node: Node | int | str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            self.rabbitmqctl(node, "cluster_status", "--formatter", "json"))
        return result

    # -- internals -------------------------------------------------------------

    def _write_state(self, owner: str) -> None:
        (self.data_dir / "state.json").write_text(json.dumps(
            {"owner": owner, "pid": os.getpid(), "started": time.time(),
             "rabbitmq": self.settings.rabbitmq}))

    def _prepare_files(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)
        cookie = self.data_dir / ".erlang.cookie"
        if not cookie.is_file():
            cookie.write_text(secrets.token_hex(20))
        os.chmod(cookie, 0o400)
        (self.data_dir / "rabbitmq-env.conf").write_text("")
        self.tls.ensure()
        for node in self.nodes:
            shutil.rmtree(node.dir, ignore_errors=True)
            (node.dir / "log").mkdir(parents=True)
            # rabbitmq_auth_mechanism_ssl: EXTERNAL login with a client
            # certificate (ships with RabbitMQ).
            (node.dir / "enabled_plugins").write_text(
                "[rabbitmq_management,rabbitmq_auth_mechanism_ssl].\n")
            node.config_file.write_text(self._config(node))

    def _config(self, node: Node) -> str:
        return "\n".join([
            f"listeners.tcp.1 = {HOST}:{node.port}",
            f"listeners.ssl.1 = {HOST}:{node.tls_port}",
            f"ssl_options.cacertfile = {self.tls.ca_file}",
            f"ssl_options.certfile = {self.tls.server_cert}",
            f"ssl_options.keyfile = {self.tls.server_key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
            # A client certificate logs in as the user its CN names when
            # EXTERNAL is offered, which only Cluster.external_login() does:
            # a py-amqp client naming no login method would pick EXTERNAL
            # before AMQPLAIN on a TLS connection.
            "ssl_cert_login_from = common_name",
            f"management.tcp.ip = {HOST}",
            f"management.tcp.port = {node.mgmt_port}",
            "management.rates_mode = none",
            # The management API shows new connections and queue stats quickly.
            "collect_statistics_interval = 1000",
            "loopback_users = none",
            # info keeps connection open/close lines and the "missed heartbeats
            # from client" error that tests count.
            "log.file.level = info",
            "log.console = false",
            # A throwaway broker on a CI disk must not block publishers.
            "disk_free_limit.absolute = 5MB",
            # RabbitMQ 4: refuse what later releases refuse by default.
            *([f"deprecated_features.permit.{feature} = false"
               for feature in DENIED_DEPRECATED_FEATURES] if self.settings.in_chroot else []),
            "",
        ])

    def _command(self, args: list[str]) -> list[str]:
        """``args`` as they run for this cluster's broker (in the chroot for 4)."""
        if self.settings.in_chroot:
            return chroot_command(self.settings.rootfs, self.data_dir, args)
        return args

    def _base_env(self) -> dict[str, str]:
        return {
            "PATH": SEARCH_PATH,
            "HOME": str(self.data_dir),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_CONF_ENV_FILE": str(self.data_dir / "rabbitmq-env.conf"),
        }

    def _ctl_env(self) -> dict[str, str]:
        low, high = self.settings.ctl_port_range
        return {**self._base_env(), "RABBITMQ_CTL_DIST_PORT_MIN": str(low),
                "RABBITMQ_CTL_DIST_PORT_MAX": str(high)}

    def _server_env(self, node: Node) -> dict[str, str]:
        return {
            **self._base_env(),
            MARKER_VAR: node.marker,
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(node.config_file),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(node.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.dir / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            # Distribution on loopback only; no busy-waiting schedulers, so
            # three VMs on a small CI machine leave CPU for the tests.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1} "
                "+sbwt none +sbwtdcpu none +sbwtdio none",
        }

    def _spawn(self, node: Node) -> None:
        LOG.info("starting %s (amqp %s:%d)", node.name, node.host, node.port)
        with contextlib.suppress(FileNotFoundError):
            node.pid_file.unlink()
        # setsid --fork: the node gets its own session (a Ctrl-C meant for us
        # is not delivered to it) and is not our child, so it never lingers
        # as our zombie or as a running subprocess at interpreter exit.
        with open(node.stdout_file, "ab") as out:
            subprocess.run(["setsid", "--fork", *self._command([str(RABBITMQ_SERVER)])],
                           env=self._server_env(node), cwd=node.dir, check=True,
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                           timeout=30)

    def _await_boot(self, node: Node, spawned: bool) -> None:
        """Wait until ``node`` has booted; start the app of a VM left without one."""
        deadline = time.monotonic() + self.settings.start_timeout

        def registered() -> bool:
            if not self._alive(node):
                raise NodeExited(f"{node.name} exited while starting:\n"
                                   f"{_tail(node.stdout_file)}\n{_tail(node.log_file)}")
            return node.short_name in _epmd_names()

        if spawned:
            # Calling rabbitmqctl before the VM registers fails at once, and
            # each call costs a second of CPU: ask epmd first, cheaply.
            wait_for(registered, self.settings.start_timeout, f"{node.name} to register")
        elif not listening(node.port):
            # A VM without listeners: the app was stopped (stop_app).
            LOG.info("starting the stopped app of %s", node.name)
            self.rabbitmqctl(node, "start_app", timeout=self.settings.start_timeout)
        while True:
            remaining = max(5, int(deadline - time.monotonic()))
            result = _run(self._command([str(RABBITMQCTL), "-n", node.name, "await_startup",
                                         "--timeout", str(remaining)]), env=self._ctl_env(),
                          timeout=remaining + 30, check=False)
            if result.returncode == 0:
                break
            if not self._alive(node) or time.monotonic() > deadline:
                raise ClusterError(f"{node.name} did not start: {result.stderr.strip()}\n"
                                   f"{_tail(node.log_file)}")
            time.sleep(0.3)

    @staticmethod
    def _alive(node: Node) -> bool:
        """Any process of the node (wrapper script or VM) is still there."""
        return any(marker == node.marker for marker, _ in _marked_processes().values())

    def _join(self, node: Node, seed: Node) -> None:
        LOG.info("joining %s to %s", node.name, seed.name)
        self.rabbitmqctl(node, "stop_app")
        self.rabbitmqctl(node, "join_cluster", seed.name)
        self.rabbitmqctl(node, "start_app")

    def _ensure_member(self, node: Node) -> None:
        """Rejoin ``node`` if it came back without its peers (e.g. data lost)."""
        members = set(self.cluster_status(node).get("disk_nodes", []))
        if members >= {n.name for n in self.nodes}:
            return
        seed = next((n for n in self.nodes if n is not node and n.pid is not None), None)
        if seed is None:
            raise ClusterError(f"{node.name} is alone and no peer runs to join")
        LOG.warning("%s is not clustered (members %s); resetting and rejoining %s",
                    node.name, sorted(members), seed.name)
        self.rabbitmqctl(node, "stop_app")
        self.rabbitmqctl(node, "reset")
        with contextlib.suppress(ClusterError):  # only if the seed still lists it
            self.rabbitmqctl(seed, "forget_cluster_node", node.name)
        self.rabbitmqctl(node, "join_cluster", seed.name)
        self.rabbitmqctl(node, "start_app")


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --------------------------------------------------------------------------
# Exclusive use and clean exit
# --------------------------------------------------------------------------

class ClusterLock:
    """``flock`` on ``<data dir>/lock``: one run per cluster at a time."""

    def __init__(self, data_dir: Path, timeout: float = 0.0, name: str = "lock") -> None:
        self.path = data_dir / name
        self.timeout = timeout
        self._file: Any = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open: it holds the lock
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    handle.close()
                    raise ClusterBusy(
                        f"the test cluster in {self.path.parent} is in use by {holder}; "
                        "wait for that run to finish (or set RHA_TEST_LOCK_TIMEOUT to "
                        "wait), or give this run its own RHA_TEST_DATA_DIR and "
                        "RHA_TEST_BASE_PORT") from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])})\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    def __enter__(self) -> ClusterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def stopped_on_exit(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` once: on leaving the block, at exit, or on SIGTERM/SIGHUP.

    SIGINT is left to Python (KeyboardInterrupt), which unwinds this block;
    ``atexit`` catches a second interrupt during that unwinding. After a
    signal the previous disposition is restored and the signal re-raised, so
    the process still dies of it.
    """
    done = False

    def run_once() -> None:
        nonlocal done
        if not done:
            done = True
            cleanup()

    def on_signal(signum: int, frame: Any) -> None:
        LOG.warning("signal %d: stopping the test cluster", signum)
        with contextlib.suppress(Exception):
            run_once()
        previous = saved.get(signum)
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    saved: dict[int, Any] = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    atexit.register(run_once)
    try:
        yield
    finally:
        try:
            run_once()
        finally:
            for sig, previous in saved.items():
                signal.signal(sig, previous)
            atexit.unregister(run_once)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _print_env(cluster: Cluster) -> None:
    values = {
        "RHA_TEST_BASE_PORT": str(cluster.settings.base_port),
        "RHA_TEST_NODE_PREFIX": cluster.settings.node_prefix,
        "RHA_TEST_DATA_DIR": str(cluster.data_dir),
        "RHA_TEST_TRANSPORT_URL": cluster.url(),
        "RHA_TEST_AMQP_URLS": " ".join(n.url for n in cluster.nodes),
        "RHA_TEST_NODES": " ".join(n.name for n in cluster.nodes),
        "RHA_TEST_MGMT_PORTS": " ".join(str(n.mgmt_port) for n in cluster.nodes),
        "RHA_TEST_TLS_PORTS": " ".join(str(n.tls_port) for n in cluster.nodes),
        "RHA_TEST_CA_FILE": cluster.tls.ca_file,
        "RHA_TEST_CLIENT_CERT": cluster.tls.client_cert,
        "RHA_TEST_CLIENT_KEY": cluster.tls.client_key,
    }
    for key, value in values.items():
        print(f"export {key}={shlex.quote(value)}")


def _print_status(cluster: Cluster) -> bool:
    for node in cluster.nodes:
        print(f"{node.name}: pid={node.pid} amqp={node.port} tls={node.tls_port} "
              f"mgmt={node.mgmt_port} dist={node.dist_port}")
    problems = cluster.health_problems()
    print(f"owner: {cluster.started_by()}")
    print("healthy" if not problems else "unhealthy: " + "; ".join(problems))
    return not problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "start", "stop", "status", "env"])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", choices=["3", "4"], default=None,
                        help="broker major version: 3 (this machine's RabbitMQ 3.10) or 4 "
                             "(RabbitMQ 4.0 from a cached Debian trixie chroot); the same as "
                             "RHA_TEST_RABBITMQ, which it overrides")
    args = parser.parse_args(argv)
    if args.version is not None:
        os.environ["RHA_TEST_RABBITMQ"] = args.version
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "install":
            install(Settings.from_env())
            return 0
        cluster = Cluster(Settings.from_env())
        if args.command == "env":
            _print_env(cluster)
            return 0
        if args.command == "status":
            return 0 if _print_status(cluster) else 1
        with ClusterLock(cluster.data_dir, cluster.settings.lock_timeout):
            if args.command == "start":
                install(cluster.settings)
                took = cluster.bootstrap(owner="cli")
                print(f"started in {took:.1f}s; stop with: {sys.argv[0]} stop")
                _print_env(cluster)
            else:
                cluster.shutdown()
                print("stopped")
        return 0
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

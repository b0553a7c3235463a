"""A PostgreSQL cluster of its own for fault injection: restarted and stopped at will.

Other people's tests and studies use the machine's ``main`` cluster; restarting it would break
them. The fault scenarios (``bench/faults.py``, ``tests/hpo/test_faults.py``) run on a cluster
named ``faults`` (port 5433, trust authentication on the loopback), created on first use with
Debian's ``pg_createcluster`` and driven with ``pg_ctlcluster``. That needs root.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_CLUSTER", "DEFAULT_PORT", "PgCluster", "cluster_problem", "ensure_cluster"]

DEFAULT_CLUSTER = "faults"
DEFAULT_PORT = 5433
_ETC = Path("/etc/postgresql")


def cluster_problem() -> str | None:
    """Why no throwaway cluster can be made here (None when one can)."""
    if os.geteuid() != 0:
        return "needs root to create, restart and stop a PostgreSQL cluster of its own"
    missing = [t for t in ("pg_createcluster", "pg_ctlcluster", "pg_lsclusters", "pg_isready")
               if shutil.which(t) is None]
    if missing or not _ETC.is_dir() or not any(_ETC.iterdir()):
        return (f"needs PostgreSQL's cluster tools ({', '.join(missing) or '/etc/postgresql'} "
                "missing); install postgresql-common and a server")
    return None


@dataclass(frozen=True)
class PgCluster:
    """One local cluster (``VERSION/NAME`` in ``pg_lsclusters``) and its port."""

    version: str
    name: str
    port: int

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` on this cluster (user postgres, trust auth)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def ctl(self, action: str) -> None:
        """``pg_ctlcluster VERSION NAME ACTION`` (start, stop, restart); waits for it."""
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name,
                        action], check=True, capture_output=True, text=True, timeout=120)
        if action in ("start", "restart"):
            self.wait_ready()

    def restart(self) -> None:
        """Restart the server (fast mode: sessions are cut, as in a crash or failover)."""
        self.ctl("restart")

    def stop(self) -> None:
        """Stop the server (every connection is cut and refused until :meth:`start`)."""
        self.ctl("stop")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.ctl("start")

    def ready(self) -> bool:
        """Whether the server accepts connections now."""
        return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                              check=False).returncode == 0

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the server accepts connections.

        Raises:
            TimeoutError: it did not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL cluster {self.version}/{self.name} on port "
                                   f"{self.port} did not accept connections in {timeout:.0f} s")
            time.sleep(0.2)


def _status(version: str, name: str) -> tuple[int, str] | None:
    out = subprocess.run(["pg_lsclusters", "--no-header"], check=True, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields[:2] == [version, name]:
            return int(fields[2]), fields[3]
    return None


def ensure_cluster(spec: str | None = None, *, port: int = DEFAULT_PORT,
                   allow_main: bool = False) -> PgCluster:
    """The cluster ``VERSION/NAME`` (default: the newest version, ``faults``), created with
    trust authentication on ``port`` if it does not exist, started if it is down.

    Raises:
        ValueError: ``spec`` names the ``main`` cluster and ``allow_main`` is false (other
            people's databases live there), or is not ``VERSION/NAME``.
        RuntimeError: this machine cannot run clusters (see :func:`cluster_problem`).
    """
    problem = cluster_problem()
    if problem:
        raise RuntimeError(problem)
    version = sorted(p.name for p in _ETC.iterdir())[-1]
    name = DEFAULT_CLUSTER
    if spec:
        version, sep, name = spec.partition("/")
        if not sep or not version or not name:
            raise ValueError(f"--pg-cluster {spec!r} must be VERSION/NAME, e.g. 15/faults")
    if name == "main" and not allow_main:
        raise ValueError(f"refusing to restart and stop the cluster {version}/main (other "
                         "databases live there); use a cluster of its own, e.g. 15/faults, or "
                         "pass --allow-main")
    status = _status(version, name)
    if status is None:
        subprocess.run(["pg_createcluster", version, name, "-p", str(port), "--",
                        "--auth=trust"], check=True, capture_output=True, text=True,
                       timeout=300)
        status = _status(version, name)
        assert status is not None
    cluster = PgCluster(version=version, name=name, port=status[0])
    if status[1] != "online":
        cluster.start()
    return cluster

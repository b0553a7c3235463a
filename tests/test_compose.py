from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO


def _compose() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_wires_postgres_dashboard_and_gpu_worker():
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = spec["services"]
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.startswith("pgdata:") for v in pg["volumes"]) and "pgdata" in spec["volumes"]
    for name in ("dashboard", "worker"):
        env = services[name]["environment"]
        assert env["HPO_STORAGE"].startswith("postgresql://hpo:${POSTGRES_PASSWORD")
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the dashboard has no login: only the host's loopback may reach it
    assert all(p.startswith("127.0.0.1:") for p in services["dashboard"]["ports"])
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1


def test_docker_compose_accepts_the_file():
    compose = _compose()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    out = subprocess.run([*compose, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr

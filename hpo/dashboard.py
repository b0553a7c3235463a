"""optuna-dashboard on the study storage and the trials' artifact store."""
from __future__ import annotations

import logging

from hpo.artifacts import ArtifactPaths
from hpo.storage import mask_url, open_storage, resolve_storage_url

__all__ = ["serve"]

log = logging.getLogger("hpo")


def serve(*, storage: str | None = None, artifacts: str | None = None,
          host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the dashboard until interrupted (binds to loopback unless told otherwise)."""
    from optuna_dashboard import run_server

    url = resolve_storage_url(storage)
    store = open_storage(url, heartbeat_interval=None)
    paths = ArtifactPaths(artifacts)
    print(f"dashboard for {mask_url(url)} on http://{host}:{port}/ (Ctrl-C to stop)",
          flush=True)
    try:
        run_server(store, host=host, port=port, artifact_store=paths.store)
    except OSError as exc:
        from hpo.errors import HpoError

        raise HpoError(f"cannot serve on {host}:{port}: {exc.strerror}; choose another "
                       "--port") from None
    except KeyboardInterrupt:
        pass

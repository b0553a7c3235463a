"""optuna-dashboard on the study storage and the trials' artifact store."""
from __future__ import annotations

import logging
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from hpo.errors import HpoError
from hpo.run.study import open_for_reading
from hpo.store.artifacts import default_artifacts_dir
from hpo.store.url import StorageURL, as_storage

__all__ = ["serve"]

log = logging.getLogger("hpo")


def serve(*, storage: StorageURL | str, artifacts: str | None = None,
          host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the dashboard until interrupted (binds to loopback unless told otherwise)."""
    from optuna_dashboard import run_server

    storage = as_storage(storage)
    store = open_for_reading(storage)
    # Reading creates nothing: without an artifact folder the dashboard shows no files.
    folder = Path(artifacts) if artifacts else default_artifacts_dir()
    files = FileSystemArtifactStore(str(folder / "store")) if (folder / "store").is_dir() \
        else None
    print(f"dashboard for {storage.masked} on http://{host}:{port}/ (Ctrl-C to stop)",
          flush=True)
    try:
        run_server(store, host=host, port=port, artifact_store=files)
    except OSError as exc:
        raise HpoError(f"cannot serve on {host}:{port}: {exc.strerror}; choose another "
                       "--port") from None
    except KeyboardInterrupt:
        pass

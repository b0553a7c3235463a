"""Shell completion for the ``hpo`` command line: names read from the storage and folders.

Each function has click's ``shell_complete`` signature ``(ctx, param, incomplete)`` and never
raises or prints: a completion must not put a traceback into the user's shell.
"""
from __future__ import annotations

__all__ = ["complete_ensembles", "complete_studies", "complete_study_files"]


def complete_study_files(ctx, param, incomplete: str) -> list[str]:
    """Shell completion for launch/worker: study files found here, and studies in storage."""
    try:
        from hpo.studyfile.files import list_studies

        names = set(list_studies())
    except Exception:
        names = set()
    names.update(complete_studies(ctx, param, ""))
    return sorted(n for n in names if n.startswith(incomplete))


def complete_studies(ctx, param, incomplete: str) -> list[str]:
    """Shell completion: the study names in the storage (nothing is created or written)."""
    try:
        from hpo.run.study import summaries
        from hpo.store.url import StorageURL, resolve_storage

        storage = ctx.params.get("storage")  # resolved already when --storage came first
        if not isinstance(storage, StorageURL):
            storage = resolve_storage(storage)
        names = [s.study_name for s in summaries(storage)]
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [n for n in names if n.startswith(incomplete)]


def complete_ensembles(ctx, param, incomplete: str) -> list[str]:
    """Shell completion: the promoted ensembles' names."""
    try:
        from hpo.store.manifest import ensemble_rows

        names = [r["name"] for r in ensemble_rows(artifacts=ctx.params.get("artifacts"))]
    except Exception:
        return []
    return [n for n in names if n.startswith(incomplete)]

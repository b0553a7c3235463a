"""Looking after a stored study: ``hpo delete`` removes a study and its files; ``hpo gc``
removes the checkpoints no ensemble and no top-N trial needs. (``hpo retry`` is
:func:`hpo.run.lineage.retry_failed`.)
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo.errors import EnsembleError, HpoError
from hpo.run.progress import size_text
from hpo.run.study import open_for_reading
from hpo.store.artifacts import checkpoint_files, default_artifacts_dir, pending_ids, trial_folder
from hpo.store.manifest import ensemble_rows, load_manifest
from hpo.store.records import ARTIFACT_ATTR_PREFIX, artifact_ids, best_first
from hpo.store.storage import with_retries
from hpo.store.url import StorageURL

__all__ = [
    "DeleteResult",
    "GcResult",
    "check_not_running",
    "collect_garbage",
    "delete_study",
]


@dataclass(frozen=True)
class DeleteResult:
    """What :func:`delete_study` removed."""

    name: str
    trials: int
    files: int
    bytes: int


def _study_files(study: optuna.Study, root: Path) -> list[Path]:
    """The study's stored artifacts (those that exist), orphaned uploads included."""
    ids: set[str] = set()  # a set: a retry that took a killed trial's result shares its files
    for t in study.get_trials(deepcopy=False):
        ids.update(artifact_ids(t).values())
        ids.update(k[len(ARTIFACT_ATTR_PREFIX):] for k in t.system_attrs
                   if k.startswith(ARTIFACT_ATTR_PREFIX))
        # uploads of a worker killed before its records (no retry swept them)
        ids.update(pending_ids(trial_folder(root, study.study_name, t.number)) or ())
    files = [root / "store" / i for i in sorted(ids) if "/" not in i and i not in ("", ".", "..")]
    return [p for p in files if p.is_file()]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_not_running(study: optuna.Study) -> None:
    """Refuse while any trial of the study is RUNNING (``hpo delete --force`` skips this).

    The rule is any RUNNING trial, whatever its heartbeat: a live worker loses its trial and
    crashes when its study goes, and a RUNNING trial whose worker died stays RUNNING until a
    worker of the study fails it, so telling the two apart is left to the user (``--force``).

    Raises:
        HpoError: the RUNNING trials and their workers (``host:pid``), and the fix.
    """
    running = with_retries(lambda: study.get_trials(deepcopy=False,
                                                    states=(TrialState.RUNNING,)),
                           what="reading running trials")
    if not running:
        return
    shown = ", ".join(f"{t.number} (worker {t.user_attrs.get('worker', 'unknown')})"
                      for t in running[:5]) + (" ..." if len(running) > 5 else "")
    name = study.study_name
    raise HpoError(f"study {name} has {len(running)} RUNNING trial(s): {shown}; deleting it "
                   "now would crash their workers, so hpo delete refuses while any trial is "
                   "RUNNING: stop those workers first (Ctrl-C the hpo launch, or kill the pid), "
                   "or, if they are dead and left their trials RUNNING, delete anyway with: "
                   f"hpo delete --study {name} --yes --force")


def delete_study(study: optuna.Study, *, storage: StorageURL | str,
                 artifacts: str | None = None, force: bool = False) -> DeleteResult:
    """Delete a study from its storage, with its stored trial files and trial folders.

    Ensemble manifests are kept (they name their checkpoints; ``hpo predict`` says when one is
    gone).

    Args:
        force: delete even while trials are RUNNING (their workers are known to be dead).

    Returns:
        What was removed.

    Raises:
        HpoError: trials are RUNNING and ``force`` is not set (:func:`check_not_running`).
    """
    if not force:
        check_not_running(study)
    root = Path(artifacts) if artifacts else default_artifacts_dir()
    name = study.study_name
    n_trials = len(study.get_trials(deepcopy=False))
    files = _study_files(study, root)
    folder = root / "trials" / name
    freed = sum(_size(p) for p in files) + (_size(folder) if folder.is_dir() else 0)
    store = open_for_reading(storage, study=name)
    with_retries(lambda: optuna.delete_study(study_name=name, storage=store),
                 what="deleting the study")
    for p in files:
        p.unlink(missing_ok=True)
    if folder.is_dir() and folder.parent == root / "trials":
        shutil.rmtree(folder, ignore_errors=True)
    return DeleteResult(name=name, trials=n_trials, files=len(files), bytes=freed)


@dataclass(frozen=True)
class GcResult:
    """What :func:`collect_garbage` removed (or, on a dry run, would remove)."""

    study: str
    files: tuple[Path, ...]
    trials: int
    bytes: int
    dry_run: bool

    def text(self) -> str:
        """One line: ``removed 12 checkpoints of 9 trials, freed 528.0 MB``."""
        what = (f"{_count(len(self.files), 'checkpoint')} of {_count(self.trials, 'trial')}")
        if self.dry_run:
            return (f"would remove {what} of study {self.study}, freeing "
                    f"{size_text(self.bytes)} (dry run: nothing removed)")
        return f"removed {what}, freed {size_text(self.bytes)}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ensemble_needs(study_name: str, root: Path) -> tuple[set[int], set[Path]]:
    """Trials of this study in an ensemble, and every checkpoint any manifest names."""
    trials: set[int] = set()
    paths: set[Path] = set()
    for row in ensemble_rows(artifacts=root):
        if "error" in row:
            raise EnsembleError(f"{row['error']}; hpo gc removed nothing, as it cannot tell "
                                "which checkpoints that ensemble needs (or move the manifest "
                                f"out of {root / 'ensembles'})")
        manifest = load_manifest(row["manifest"])
        for model in _manifest_models(manifest):
            if manifest.get("study") == study_name and isinstance(model.get("trial"), int):
                trials.add(model["trial"])
            for key, base in (("checkpoint", Path("/")), ("artifact", root)):
                if isinstance(model.get(key), str):
                    paths.add((base / model[key]).resolve())
    return trials, paths


def _manifest_models(manifest: dict) -> list[dict]:
    """Every model a manifest names: its members, or a refit member's fold and full models
    (their trials are the refit study's; the member's own number is its source trial's)."""
    models: list[dict] = []
    for member in manifest["members"]:
        folds = [f for f in member.get("folds") or [] if isinstance(f, dict)]
        full = member.get("full")
        models += [*folds, *([full] if isinstance(full, dict) else [])] or [member]
    return models


def _busy(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """RUNNING and WAITING trials, and the failed trials a retry among them may resume from."""
    busy: set[int] = set()
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            busy.add(t.number)
            busy.update(RetryHeartbeatStaleTrialCallback.retry_history(t))
    return busy


def _top(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], n: int) -> set[int]:
    """The ``n`` best completed trials, ranked as ``hpo promote`` ranks them."""
    return {t.number for t in best_first(trials, study.direction)[:n]}


def _unneeded(study: optuna.Study, root: Path, keep_top: int) -> dict[Path, int]:
    """{checkpoint file: trial number} of what no ensemble, top trial or retry needs."""
    trials = with_retries(lambda: study.get_trials(deepcopy=False), what="reading trials")
    in_ensembles, named = _ensemble_needs(study.study_name, root)
    keep = _top(study, trials, keep_top) | in_ensembles
    busy = _busy(trials)
    found: dict[Path, int] = {}
    for t in trials:
        if not t.state.is_finished() or t.number in busy:
            continue  # a running trial's folder, or a checkpoint a queued retry resumes from
        for path in checkpoint_files(trial_folder(root, study.study_name, t.number)):
            if path.resolve() not in named:
                found[path] = t.number
        artifact_id = artifact_ids(t).get("best.pt")
        if t.state != TrialState.COMPLETE or t.number in keep or not isinstance(artifact_id, str):
            continue
        stored = root / "store" / artifact_id
        if "/" not in artifact_id and stored.is_file() and stored.resolve() not in named:
            found[stored] = t.number
    return found


def collect_garbage(study: optuna.Study, *, artifacts: str | None = None, keep_top: int = 5,
                    dry_run: bool = False) -> GcResult:
    """Remove the checkpoints of a study that nothing needs (``hpo gc``).

    Goes: the stored ``best.pt`` of completed trials in no ensemble manifest and not among
    the ``keep_top`` best; and, in the folders of finished trials, leftover ``best.pt`` /
    ``last.pt`` and half-written saves (``*.tmp``). Never touched: a RUNNING or WAITING trial's
    folder, the checkpoints a queued or running retry resumes from, any checkpoint a manifest
    names. Only files go: nothing is written to the storage (a reader that needs a removed
    ``best.pt`` says so, and ``hpo promote`` leaves such trials out).

    Args:
        study: the loaded study.
        artifacts: the artifact folder its workers used (default ``$HPO_ARTIFACTS`` or
            ./artifacts).
        keep_top: how many of the best completed trials keep their checkpoint (>= 1).
        dry_run: only say what would go.

    Returns:
        The files removed (or that would be), their trials and bytes.

    Raises:
        HpoError: ``keep_top`` < 1.
        EnsembleError: an ensemble manifest cannot be read (nothing is removed).
    """
    if keep_top < 1:
        raise HpoError(f"keep_top is {keep_top}, but must be >= 1 (the best trial keeps its "
                       "checkpoint for hpo promote); pass --keep-top 1 or more")
    root = Path(artifacts) if artifacts else default_artifacts_dir()
    gone: dict[Path, int] = {}
    freed = 0
    for path, number in _unneeded(study, root, keep_top).items():
        try:
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
        except FileNotFoundError:  # its trial's retry or another gc removed it first
            continue
        gone[path] = number
        freed += size
    return GcResult(study=study.study_name, files=tuple(gone), trials=len(set(gone.values())),
                    bytes=freed, dry_run=dry_run)

"""Ensemble manifests: where they live, how they are read, listed, shown and written.

``<artifacts>/ensembles/<name>.json`` records an ensemble's members (trial, weight, checkpoint
path and sha256, preprocessing), how they were chosen and the F1 figures; ``hpo promote``
writes it (atomically) and ``hpo predict`` and ``hpo ensembles`` read it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from hpo.artifacts import default_artifacts_dir
from hpo.errors import EnsembleError

__all__ = [
    "MANIFEST_FORMAT",
    "NAME_PATTERN",
    "ensemble_rows",
    "ensembles_dir",
    "file_sha256",
    "find_manifest",
    "list_ensembles",
    "load_manifest",
    "manifest_table",
    "write_json_atomic",
]

MANIFEST_FORMAT = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def ensembles_dir(artifacts: str | os.PathLike | None = None) -> Path:
    """``<artifacts root>/ensembles`` (root: ``artifacts``, ``$HPO_ARTIFACTS`` or ./artifacts)."""
    root = Path(artifacts) if artifacts else default_artifacts_dir()
    return root / "ensembles"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _available(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))


def find_manifest(name_or_path: str | os.PathLike, *,
                  artifacts: str | os.PathLike | None = None) -> Path:
    """The manifest file of an ensemble name (``hpo ensembles``) or of a path to one.

    Raises:
        EnsembleError: no such ensemble; the message lists the available ones.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.suffix == ".json" and path.is_file():
        return path.resolve()
    folder = ensembles_dir(artifacts)
    path = folder / f"{text}.json"
    if not NAME_PATTERN.match(text) or not path.is_file():
        names = _available(folder)
        shown = ", ".join(names) if names else "none yet (make one with hpo promote)"
        raise EnsembleError(f"no ensemble named {text!r} in {folder}; available: {shown}")
    return path.resolve()


def load_manifest(name_or_path: str | os.PathLike, *,
                  artifacts: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read an ensemble manifest by name (``hpo ensembles``) or by path to its JSON file.

    Args:
        name_or_path: an ensemble name, or the path of a manifest file.
        artifacts: the artifact folder whose ``ensembles/`` holds named manifests.

    Returns:
        The manifest exactly as :func:`promote` wrote it.

    Raises:
        EnsembleError: no such ensemble (the message lists the available ones), or a file that
            is not an ensemble manifest.
    """
    path = find_manifest(name_or_path, artifacts=artifacts)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnsembleError(f"ensemble manifest {path} cannot be read ({type(exc).__name__}); "
                            "re-run hpo promote to write it again") from None
    if not isinstance(manifest, dict) or not manifest.get("members"):
        raise EnsembleError(f"{path} is not an hpo ensemble manifest (no members); re-run "
                            "hpo promote to write it again")
    return manifest


def ensemble_rows(*, artifacts: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One entry per manifest in ``<artifacts>/ensembles``, sorted by name.

    Each: name, study, method, member trials and weights, ensemble F1 (``f1_report``: half B,
    or out-of-fold), created, manifest path; an unreadable manifest has ``error`` instead.

    Args:
        artifacts: the artifact folder (default ``$HPO_ARTIFACTS`` or ./artifacts).
    """
    folder = ensembles_dir(artifacts)
    rows: list[dict[str, Any]] = []
    for name in _available(folder):
        path = folder / f"{name}.json"
        try:
            m = load_manifest(path)
        except EnsembleError as exc:
            rows.append({"name": name, "manifest": str(path), "error": str(exc)})
            continue
        f1_b = (m.get("f1") or {}).get("report")
        rows.append({
            "name": name, "study": m.get("study"), "method": m.get("method"),
            "members": [{"trial": x.get("trial"), "weight": x.get("weight")}
                        for x in m["members"]],
            "f1_report": f1_b if isinstance(f1_b, (int, float)) else None,
            "created": m.get("created"), "manifest": str(path),
        })
    return rows


def list_ensembles(*, artifacts: str | os.PathLike | None = None) -> list[str]:
    """One printable line per manifest (see :func:`ensemble_rows`); empty when there is none."""
    lines = []
    for r in ensemble_rows(artifacts=artifacts):
        if "error" in r:
            lines.append(f"{r['name']:<24} (unusable: {r['error']})")
            continue
        trials = ",".join(str(x["trial"]) for x in r["members"])
        shown = f"{r['f1_report']:.4f}" if r["f1_report"] is not None else "-"
        lines.append(f"{r['name']:<24} study {r['study'] or '?':<16} {r['method'] or '?':<6} "
                     f"members {len(r['members'])} (trials {trials})  f1 B {shown}  "
                     f"created {r['created'] or '?'}")
    return lines


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as JSON to ``path`` all at once (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # readers see the old manifest or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)



def manifest_table(m: dict[str, Any]) -> str:
    """The promotion table of a manifest (see :meth:`PromoteResult.table`)."""
    split = m["split"]
    lines = [
        f"ensemble {m['name']} of study {m['study']}: {m['method']}, {len(m['members'])} "
        f"member(s) from {m['candidates']} candidate(s)",
        f"selected on half A ({split['select_people']} people, {split['select_images']} "
        f"images), reported on half B ({split['report_people']} people, "
        f"{split['report_images']} images)",
        f"{'trial':>5}  {'model':<24} {'weight':>6}  {'f1 A':>6}  {'f1 B':>6}",
    ]
    for x in m["members"]:
        lines.append(f"{x['trial']:>5}  {x['model']:<24} {x['weight']:>6.3f}  "
                     f"{x['f1_select']:>6.4f}  {x['f1_report']:>6.4f}")
    f1, single = m["f1"], m["best_single"]
    lines.append(f"{'ensemble':<40}{f1['select']:>6.4f}  {f1['report']:>6.4f}  "
                 f"(all {f1['all']:.4f})")
    lines.append(f"best single model on A: trial {single['trial']}, f1 B "
                 f"{single['f1_report']:.4f}; ensemble gain on B {m['gain_report']:+.4f}")
    refit = m.get("refit")
    if refit:  # hpo refit: out-of-fold probabilities of every training person
        ens, one = refit["ensemble"], refit["best_single"]
        lines.append(f"out of fold ({refit['folds']} folds, {refit['oof_images']} images): "
                     f"ensemble f1 {ens['f1']:.4f} (age {ens['age_f1']:.4f}), best member "
                     f"trial {one['trial']} f1 {one['f1']:.4f} (age {one['age_f1']:.4f})")
    return "\n".join(lines)

"""Ensemble manifests: where they live, how they are read, listed, shown and written.

``<artifacts>/ensembles/<name>.json`` records an ensemble's members (trial, weight, checkpoint
path and sha256, preprocessing), how they were chosen and the F1 figures; ``hpo promote``
writes it (atomically) and ``hpo predict`` and ``hpo ensembles`` read it.

A manifest is sealed when written (:func:`seal_manifest`): ``digest`` is the sha256 of the
canonical JSON of every other field, and ``digests`` keeps a short digest of each top-level
field and of each key of each member, so :func:`load_manifest` refuses an edited manifest and
names the field that changed. Manifests written before seals existed (no ``digest``) still load,
with a logged warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from hpo.errors import EnsembleError
from hpo.store.artifacts import default_artifacts_dir

__all__ = [
    "MANIFEST_FORMAT",
    "NAME_PATTERN",
    "ensemble_rows",
    "ensembles_dir",
    "find_manifest",
    "list_ensembles",
    "load_manifest",
    "manifest_table",
    "seal_manifest",
    "verify_manifest",
    "write_json_atomic",
]

MANIFEST_FORMAT = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DIGEST_KEY = "digest"
DIGESTS_KEY = "digests"
_PART_HEX = 16  # a part's digest only has to tell which field changed; ``digest`` is the seal

log = logging.getLogger("hpo")
_unsealed_warned: set[str] = set()


def ensembles_dir(artifacts: str | os.PathLike | None = None) -> Path:
    """``<artifacts root>/ensembles`` (root: ``artifacts``, ``$HPO_ARTIFACTS`` or ./artifacts)."""
    root = Path(artifacts) if artifacts else default_artifacts_dir()
    return root / "ensembles"


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
        EnsembleError: no such ensemble (the message lists the available ones), a file that
            is not an ensemble manifest, or one edited since it was written
            (:func:`verify_manifest`; an unsealed, older manifest loads with a warning).
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
    verify_manifest(manifest, name=path.stem, path=path)
    return manifest


def ensemble_rows(*, artifacts: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One entry per manifest in ``<artifacts>/ensembles``, sorted by name.

    Each: name, study, method, member trials and weights, ensemble F1 (``f1_report``: half B,
    or out-of-fold), created, manifest path; an unreadable manifest, or one edited since hpo
    promote wrote it, has ``error`` instead (the listing marks it; ``hpo gc`` refuses on it).

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


# ---------------------------------------------------------------------------------------------
# the seal: what promote wrote is what predict, refit and gc read


def _sha(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys, no spaces, ASCII)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _body(manifest: dict[str, Any]) -> dict[str, Any]:
    """Every field the seal covers: all but ``digest`` and ``digests`` themselves."""
    return {k: v for k, v in manifest.items() if k not in (DIGEST_KEY, DIGESTS_KEY)}


def _part_digests(manifest: dict[str, Any]) -> dict[str, str]:
    """A short digest of each top-level field and of each key of each member
    (``members[1].weight``); a member that is not a dict is one part (``members[1]``)."""
    parts: dict[str, str] = {}
    for key, value in _body(manifest).items():
        if key != "members" or not isinstance(value, list):
            parts[key] = _sha(value)[:_PART_HEX]
            continue
        for i, member in enumerate(value):
            if not isinstance(member, dict) or not member:
                parts[f"members[{i}]"] = _sha(member)[:_PART_HEX]
                continue
            for sub, x in member.items():
                parts[f"members[{i}].{sub}"] = _sha(x)[:_PART_HEX]
    return parts


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with ``digests`` (per field and member key) and ``digest`` (sha256 over the
    canonical JSON of every other field) added, as :func:`load_manifest` verifies them."""
    body = _body(manifest)
    return {**body, DIGESTS_KEY: _part_digests(body), DIGEST_KEY: _sha(body)}


def _member_index(part: str) -> int | None:
    """3 for ``members[3].weight``; None for a top-level field."""
    found = re.match(r"^members\[(\d+)\]", part)
    return int(found.group(1)) if found else None


def _member_count(parts: dict[str, Any]) -> int:
    indices = [i for i in map(_member_index, parts) if i is not None]
    return max(indices, default=-1) + 1


def _shown(part: str, how: str) -> str:
    return f"{part} {how}" if part.startswith("members[") else f"field {part!r} {how}"


def _count_change(before: int, after: int) -> list[str]:
    if after == before:
        return []
    n = abs(after - before)
    what = ("a member was" if n == 1 else f"{n} members were") + (
        " added" if after > before else " removed")
    return [f"{what} ({after} member{'s' if after != 1 else ''} now, hpo promote wrote "
            f"{before})"]


def _what_changed(manifest: dict[str, Any]) -> str:
    """Which fields differ from the digests promote recorded, e.g. ``members[1].weight
    changed``; at most three are named."""
    recorded = manifest.get(DIGESTS_KEY)
    if not isinstance(recorded, dict):
        return _shown(DIGESTS_KEY, "changed" if DIGESTS_KEY in manifest else "was removed")
    now = _part_digests(manifest)
    before, after = _member_count(recorded), _member_count(now)
    shared = min(before, after)
    changes = _count_change(before, after)
    for part in [*recorded, *(p for p in now if p not in recorded)]:
        index = _member_index(part)
        if index is not None and index >= shared:
            continue  # an added or removed member is named once, above
        if part not in now:
            changes.append(_shown(part, "was removed"))
        elif part not in recorded:
            changes.append(_shown(part, "was added"))
        elif recorded[part] != now[part]:
            changes.append(_shown(part, "changed"))
    if not changes:  # every field as recorded: the seal itself was edited
        changes.append(_shown(DIGEST_KEY, "changed" if DIGEST_KEY in manifest else
                              "was removed"))
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    return ", ".join(changes[:3]) + more


def verify_manifest(manifest: dict[str, Any], *, name: str, path: Path) -> None:
    """Check a manifest against the seal :func:`seal_manifest` gave it.

    A manifest without ``digest`` and ``digests`` (hpo promote wrote it before manifests were
    sealed) passes, with a warning logged once per file.

    Raises:
        EnsembleError: a field edited, added or removed since ``hpo promote`` wrote it; the
            message names the field (``members[1].weight``, ``field 'split'``).
    """
    if DIGEST_KEY not in manifest and DIGESTS_KEY not in manifest:
        if str(path) not in _unsealed_warned:
            _unsealed_warned.add(str(path))
            log.warning("ensemble %s's manifest %s has no digest (an older hpo promote wrote "
                        "it), so edits to it cannot be detected; promote it again to seal it",
                        name, path)
        return
    if manifest.get(DIGEST_KEY) == _sha(_body(manifest)):
        return
    study = manifest.get("study")
    study = study if isinstance(study, str) and study else "STUDY"
    raise EnsembleError(f"ensemble {name}'s manifest was edited after hpo promote wrote it: "
                        f"{_what_changed(manifest)}; promote it again with: hpo promote "
                        f"--study {study} --name {name}")


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

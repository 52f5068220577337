"""The demo sets: all three generators under one cache folder.

The sets are regenerated only when the manifest says the parameters or the files changed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchdicom._atomic import write_text_atomic
from torchdicom.samples._sampleset import SampleSet
from torchdicom.samples.ct import ct_like
from torchdicom.samples.siim import siim_like
from torchdicom.samples.ultrasound import us_cine_like

__all__ = ["SAMPLES_VERSION", "DemoData", "demo_data"]

#: Bumped whenever a generator's output changes, so cached demo sets are rebuilt.
SAMPLES_VERSION = 2


@dataclass
class DemoData:
    """The three demo sets written by :func:`demo_data`.

    Attributes:
        root: the cache folder holding ``siim/``, ``ct/``, ``us/`` and
            ``manifest.json``.
        siim: chest radiographs (:func:`siim_like`).
        ct: CT series (:func:`ct_like`).
        us: ultrasound cine (:func:`us_cine_like`).
        reused: ``True`` when the sets were already complete and nothing was
            written.
    """

    root: Path
    siim: SampleSet
    ct: SampleSet
    us: SampleSet
    reused: bool = False


_MANIFEST = "manifest.json"

# Defaults sized to generate in seconds on two cores (see demo_data): ~100 MB in all.
_DEMO_PARAMS: dict[str, dict[str, Any]] = {
    "siim": {"n": 250, "size": 256, "seed": 0},
    "ct": {"n_series": 4, "slices": 25, "size": 512, "seed": 0},
    "us": {"n": 3, "frames": 300, "size": 253, "seed": 0},
}
_SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "siim": {"n": 8, "size": 64, "seed": 0},
    "ct": {"n_series": 4, "slices": 4, "size": 64, "seed": 0},
    "us": {"n": 2, "frames": 6, "size": 48, "seed": 0},
}
_GENERATORS = {"siim": siim_like, "ct": ct_like, "us": us_cine_like}


def _default_root() -> Path:
    env = os.environ.get("TORCHDICOM_SAMPLES")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/torchdicom/samples").expanduser()


def _read_manifest(root: Path, expected: dict[str, Any]) -> DemoData | None:
    """The cached sets when the manifest matches ``expected`` and every file is there."""
    try:
        manifest = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("version") != SAMPLES_VERSION or manifest.get("params") != expected:
        return None
    sets = {}
    for name in _GENERATORS:
        entry = manifest.get("sets", {}).get(name)
        if entry is None:
            return None
        sample_set = SampleSet._from_json(root / name, entry)
        sizes = entry.get("sizes", {})
        for path in [*sample_set.files, *sample_set.masks, sample_set.labels_csv]:
            if path is None:
                continue
            rel = path.relative_to(root).as_posix()
            try:
                if path.stat().st_size != sizes.get(rel):
                    return None
            except OSError:
                return None
        sets[name] = sample_set
    return DemoData(root, sets["siim"], sets["ct"], sets["us"], reused=True)


def demo_data(root: str | os.PathLike[str] | None = None, small: bool = False) -> DemoData:
    """Generate the three demo sets once, and reuse them afterwards.

    ``root`` (default ``$TORCHDICOM_SAMPLES`` or ``~/.cache/torchdicom/samples``)
    receives ``siim/`` (:func:`siim_like`), ``ct/`` (:func:`ct_like`), ``us/``
    (:func:`us_cine_like`) and ``manifest.json``. The manifest, written last
    and atomically, records the version and generator parameters and the size
    of every file; a later call reuses the sets when it matches and every file
    is present, and otherwise deletes ``siim/``, ``ct/``, ``us/`` under
    ``root`` and regenerates them — so ``root`` must be a folder torchdicom
    owns.

    Defaults: SIIM 250 images at 256x256; CT 4 series x 25 slices at 512x512;
    ultrasound 3 files x 300 frames at 253x253 (the last one JPEG) — fewer
    frames than :func:`us_cine_like`'s 1000, which would add ~240 MB (native
    frames and masks) and several seconds; call it directly for full-length cine.
    ``small=True`` writes a tiny version for tests (a few files, 64-pixel CT,
    six-frame cine).

    Args:
        root: the cache folder.
        small: the tiny test version instead of the default one.

    Returns:
        :class:`DemoData`; ``reused`` tells whether anything was written.
    """
    root = _default_root() if root is None else Path(root)
    params = _SMALL_PARAMS if small else _DEMO_PARAMS
    cached = _read_manifest(root, params)
    if cached is not None:
        return cached

    root.mkdir(parents=True, exist_ok=True)
    # Remove the manifest first: an interrupted run then leaves none, and the
    # next call regenerates instead of trusting half-written sets.
    (root / _MANIFEST).unlink(missing_ok=True)
    sets = {}
    for name, generate in _GENERATORS.items():
        shutil.rmtree(root / name, ignore_errors=True)
        sets[name] = generate(root / name, **params[name])

    manifest_sets = {}
    for name, sample_set in sets.items():
        entry = sample_set._to_json()
        entry["sizes"] = {
            path.relative_to(root).as_posix(): path.stat().st_size
            for path in [*sample_set.files, *sample_set.masks, sample_set.labels_csv]
            if path is not None
        }
        manifest_sets[name] = entry
    manifest = {"version": SAMPLES_VERSION, "params": params, "sets": manifest_sets}
    write_text_atomic(root / _MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return DemoData(root, sets["siim"], sets["ct"], sets["us"], reused=False)

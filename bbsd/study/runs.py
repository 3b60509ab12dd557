"""Running profiles over a truth set through the production path, one result line per photo.

Invariants: each profile labels through `engines.open_labeler` and `Pipeline.label` (the
contained decoder, the supervised worker, the same validation) and writes nothing beside the
photos; a photo's result is appended to `OUT/<profile>/photos.jsonl` as soon as it is known,
so an interrupted run resumes where it stopped and never labels a photo twice. Lines stored by an
older bbsd stay readable: a field they lack (`scores`) counts as unknown in the summary, never as a value.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from bbsd import config as config_mod
from bbsd import metrics
from bbsd.config import Settings
from bbsd.engine import confidence, prompt
from bbsd.errors import BbsdError, ConfigError, PhotoError
from bbsd.sidecars import record as sidecar
from bbsd.study.truth import Truth

log = structlog.get_logger("bbsd.eval")


@dataclass(frozen=True)
class Profile:
    name: str
    settings: Settings


def profiles(config: Path, files: list[Path]) -> list[Profile]:
    """The profiles named on the command line (each a TOML overlay, named by its file stem), or the config alone."""
    if not files:
        return [Profile("config", config_mod.load(config))]
    names = [f.stem for f in files]
    if len(set(names)) != len(names):
        raise ConfigError(f"two profiles share a name ({', '.join(names)})", "profiles are named by file stem; "
                          "rename one")
    for f in files:
        if not f.is_file():
            raise ConfigError(f"profile {f} does not exist", "pass a TOML file with [model]/[engine] overrides")
    return [Profile(f.stem, config_mod.load_profile(config, f)) for f in files]


class Results:
    """`OUT/<profile>/photos.jsonl` (one result per photo) and `loads.jsonl` (one line per model load).

    `settings.json` records what made them: a rerun with other settings under the same profile
    name would mix two models' answers, so it is refused instead of resumed.
    """

    def __init__(self, out: Path, profile: Profile) -> None:
        self.folder = out / profile.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self._claim(fingerprint(profile.settings))
        for name in ("photos.jsonl", "loads.jsonl"):
            _drop_cut_line(self.folder / name)

    def _claim(self, made_with: dict[str, Any]) -> None:
        marker = self.folder / "settings.json"
        if marker.exists() and json.loads(marker.read_text(encoding="utf-8")) != made_with:
            raise ResultsMismatchError(f"{self.folder} holds results made with other settings than profile "
                                       f"{self.folder.name!r} has now",
                                       "remove that folder to start over, or pass another --out")
        marker.write_text(json.dumps(made_with, sort_keys=True), encoding="utf-8")

    def photos(self) -> dict[str, dict[str, Any]]:
        return {r["file"]: r for r in _lines(self.folder / "photos.jsonl")}

    def loads(self) -> list[dict[str, Any]]:
        return _lines(self.folder / "loads.jsonl")

    def add_photo(self, record: dict[str, Any]) -> None:
        _append(self.folder / "photos.jsonl", record)

    def add_load(self, record: dict[str, Any]) -> None:
        _append(self.folder / "loads.jsonl", record)


class ResultsMismatchError(BbsdError):
    """Stored results were made with other settings than the profile now has."""


def fingerprint(settings: Settings) -> dict[str, Any]:
    """What decides a profile's answers: model files, prompt, engine and backend settings."""
    from bbsd.engine.registry import model_info

    made_with = sidecar.identity(model_info(settings), prompt.for_settings(settings))
    return {**made_with, "engine": repr(settings.engine), "backend": repr(settings.backend)}


def _lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a results file; a line cut short by an interruption is dropped (relabelled)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _drop_cut_line(path: Path) -> None:
    """Remove a last line an interruption cut short, so the next result starts a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run(profile: Profile, truths: list[Truth], results: Results, advance: Callable[[str], None]) -> None:
    """Label every photo of `truths` that `results` does not hold yet with this profile's model."""
    from bbsd.engine.registry import open_labeler
    from bbsd.pipeline import Pipeline

    done = results.photos()
    todo = [t for t in truths if str(t.file) not in done]
    for _ in range(len(truths) - len(todo)):
        advance(f"{profile.name}: done before")
    if not todo:
        return
    settings = profile.settings
    t0 = time.perf_counter()
    labeler = open_labeler(settings)
    load_ms = (time.perf_counter() - t0) * 1000
    results.add_load({"load_ms": round(load_ms, 1), "backend": labeler.info.backend, "model": labeler.info.file,
                      "mmproj": labeler.info.mmproj, "gpu": labeler.gpu})
    log.info("eval.loaded", profile=profile.name, load_ms=round(load_ms, 1), photos=len(todo))
    pipeline = Pipeline(labeler, settings, prompt.for_settings(settings))
    try:
        for i, truth in enumerate(todo):
            # The first photo after a load evaluates the prompt's fixed prefix (reference gallery included);
            # the summary keeps it apart from the rest, which find the prefix cached.
            record = {**label_one(pipeline, truth.file), "after_load": i == 0}
            results.add_photo(record)
            advance(f"{profile.name}: {truth.file.name} {record['error'] or 'ok'} {record['ms']:.0f} ms")
    finally:
        pipeline.close()


def label_one(pipeline, photo: Path) -> dict[str, Any]:
    """One photo's prediction and cost; a photo the model cannot label is a result too (it predicted nothing)."""
    t0 = time.perf_counter()
    try:
        labels, inference = pipeline.label(photo)
    except PhotoError as e:
        labels, inference, error = None, None, e.code
    else:
        error = None
    ms = (time.perf_counter() - t0) * 1000
    scored = _scores(pipeline, inference) if labels else None
    rss = inference.rss_mb if inference and inference.rss_mb is not None else metrics.rss_mb()
    vram = inference.vram_mb if inference and inference.rss_mb is not None else metrics.vram_mb(pipeline.labeler.gpu)
    return {
        "file": str(photo), "error": error, "ms": round(ms, 1),
        "characters": list(labels.characters) if labels else [], "props": list(labels.props) if labels else [],
        "answers": dict(labels.answers) if labels else {},
        # Each written name's confidence (local engine only), for precision and recall against a review threshold.
        "confidence": _confidences(scored),
        # Every field's scores as `confidence.score` gives them (chosen names and the strongest name not
        # chosen), so `confidence.needs_review` can decide the review set again at any threshold; None
        # when the photo failed or the backend reports no token probabilities.
        "scores": scored,
        "rss_mb": rss, "vram_mb": vram,
        "prompt_tokens": inference.prompt_tokens if inference else 0,
        "output_tokens": inference.output_tokens if inference else 0,
        # Prompt tokens really evaluated for this photo (the rest came from the cached prefix); None when
        # the backend does not say (remote servers) or the photo failed.
        "evaluated_tokens": inference.evaluated_tokens if inference else None,
    }


def _scores(pipeline, inference) -> dict[str, dict] | None:
    """The pipeline's confidence of a reply without its verdict at today's threshold (the fields only)."""
    full = pipeline.confidence(inference)
    return None if full is None else {kind: full[kind] for kind in confidence.FIELDS if kind in full}


def _confidences(scored: dict[str, dict] | None) -> dict[str, dict[str, float]]:
    return {kind: {n["name"]: n["confidence"] for n in field["names"]} for kind, field in (scored or {}).items()}

"""Does the review set hold the model's mistakes, and do its confidences mean what they say: pure functions.

Invariant: a photo is in the review set exactly when `confidence.needs_review` says so for the scores
recorded when it was labelled — the rule the pipeline applies before it writes the review keyword —
so the figures hold at any threshold without labelling again. A photo whose scores were not recorded
(a result from before they were, a backend without token probabilities) is unknown, never "not
flagged"; a photo that failed carries an error, not labels, and is counted apart. Counts sit beside
every share, and a share of nothing is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bbsd.engine import confidence
from bbsd.study.scores import ratio

# Fine steps where instruction-tuned models put most of their names (overconfident: 0.9 and up).
THRESHOLDS = (*(round(0.05 * i, 2) for i in range(20)), 0.97, 0.99, 1.0)
BINS = 10


@dataclass(frozen=True)
class Photo:
    """One photo's mistakes (names given that are not there, names there not given; both kinds) and
    the confidence scores recorded for it (`confidence.score`'s fields; None: unknown)."""

    mistakes: int
    scores: dict[str, Any] | None
    failed: bool = False


def capture(photos: Sequence[Photo], threshold: float, thresholds: Sequence[float] = THRESHOLDS
            ) -> dict[str, Any] | None:
    """The review set at `threshold` — photos, flagged, mistakes, caught — and the same at each of
    `thresholds` (with `threshold` itself); None when no photo has recorded scores."""
    known = [p for p in photos if not p.failed and p.scores is not None]
    if not known:
        return None
    curve = [_point(known, t) for t in sorted({*thresholds, threshold})]
    return {**_point(known, threshold), "photos": len(known), "mistakes": sum(p.mistakes for p in known),
            "failed": sum(p.failed for p in photos),
            "unknown": sum(not p.failed and p.scores is None for p in photos), "curve": curve}


def _point(known: Sequence[Photo], threshold: float) -> dict[str, Any]:
    """The set at one threshold, and the most mistakes any set of as many photos could hold (`best`):
    where the model errs on more photos than the editors check, no confidence can catch them all."""
    flagged = [p for p in known if confidence.needs_review(p.scores, threshold)]
    caught, mistakes = sum(p.mistakes for p in flagged), sum(p.mistakes for p in known)
    best = sum(sorted((p.mistakes for p in known), reverse=True)[:len(flagged)])
    return {"threshold": threshold, "flagged": len(flagged), "caught": caught,
            "flagged_share": ratio(len(flagged), len(known)), "caught_share": ratio(caught, mistakes),
            "best": best, "best_share": ratio(best, mistakes)}


def reliability(names: Sequence[tuple[float, bool]], bins: int = BINS) -> dict[str, Any] | None:
    """Written names binned by confidence, each bin's share of right names against its mean
    confidence, and the expected calibration error (the bins' gaps weighed by their names); None
    without names. `names`: each written name's confidence and whether it is really there."""
    if not names:
        return None
    slots: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for c, right in names:
        slots[min(int(c * bins), bins - 1)].append((c, right))
    rows = [_bin(i / bins, (i + 1) / bins, slot) for i, slot in enumerate(slots)]
    ece = sum(r["names"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["names"]) / len(names)
    return {"names": len(names), "right": sum(right for _, right in names), "ece": ece, "bins": rows}


def _bin(low: float, high: float, slot: list[tuple[float, bool]]) -> dict[str, Any]:
    right = sum(r for _, r in slot)
    return {"low": round(low, 6), "high": round(high, 6), "names": len(slot), "right": right,
            "confidence": ratio(sum(c for c, _ in slot), len(slot)), "accuracy": ratio(right, len(slot))}

"""Accuracy of predicted name sets against the truth: pure functions of data, no I/O.

Invariant: every figure is computed from counts kept beside it (tp, fp, fn), so a report
reader can check it; a ratio whose denominator is zero is None, never a made-up 0 or 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One photo of one kind (characters or props): the true names and the predicted ones.

    `failed` marks a photo the model gave no valid reply for: it predicted nothing.
    """

    truth: frozenset[str]
    predicted: frozenset[str]
    failed: bool = False


def ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float | int | None]:
    p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f1(p, r)}


def per_label(samples: Sequence[Sample]) -> dict[str, dict[str, float | int | None]]:
    """Precision, recall and F1 for every name that is true or predicted somewhere."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for s in samples:
        tp.update(s.truth & s.predicted)
        fp.update(s.predicted - s.truth)
        fn.update(s.truth - s.predicted)
    names = sorted(set(tp) | set(fp) | set(fn))
    return {n: _prf(tp[n], fp[n], fn[n]) for n in names}


def kind_summary(samples: Sequence[Sample]) -> dict[str, object]:
    """Per-label figures, micro and macro averages and exact-set accuracy for one kind."""
    labels = per_label(samples)
    micro = _prf(*(sum(v[k] for v in labels.values()) for k in ("tp", "fp", "fn")))
    # Macro: each name weighs the same; an undefined figure (never predicted) counts as 0.
    macro = {k: ratio(sum(v[k] or 0.0 for v in labels.values()), len(labels)) for k in ("precision", "recall", "f1")}
    exact = ratio(sum(s.truth == s.predicted for s in samples), len(samples))
    return {"labels": labels, "micro": micro, "macro": macro, "exact": exact,
            "confusions": confusions(samples)}


def confusions(samples: Sequence[Sample], top: int = 10) -> list[dict[str, object]]:
    """The most common (true name missed, other name given instead) pairs within one photo."""
    pairs = Counter()
    for s in samples:
        for missed in sorted(s.truth - s.predicted):
            for given in sorted(s.predicted - s.truth):
                pairs[(missed, given)] += 1
    return [{"truth": t, "predicted": p, "count": c} for (t, p), c in pairs.most_common(top)]


def hallucination_rate(photos: Sequence[Sequence[Sample]]) -> float | None:
    """Share of photos where the model named at least one character or prop that is not there."""
    return ratio(sum(any(s.predicted - s.truth for s in kinds) for kinds in photos), len(photos))


def question_accuracy(pairs: Sequence[tuple[object, object]]) -> dict[str, object]:
    """Accuracy of one closed question over the photos whose truth answers it: (true, predicted) pairs."""
    right = sum(t == p for t, p in pairs)
    wrong = Counter((str(t), str(p)) for t, p in pairs if t != p)
    return {"photos": len(pairs), "correct": right, "accuracy": ratio(right, len(pairs)),
            "confusions": [{"truth": t, "predicted": p, "count": c} for (t, p), c in wrong.most_common(5)]}


THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def threshold_curve(photos: Sequence[tuple[Sample, dict[str, float]]],
                    thresholds: Sequence[float] = THRESHOLDS) -> list[dict[str, float | None]] | None:
    """Micro precision and recall if only names at or above each confidence were kept.

    That is what a review threshold trades: the names below it go to a person. A name without a
    confidence (a backend that cannot see token probabilities) is always kept; None when no
    name has one, since the curve would be flat and say nothing.
    """
    if not any(conf for _, conf in photos):
        return None
    curve = []
    for t in thresholds:
        kept = [Sample(s.truth, frozenset(n for n in s.predicted if conf.get(n, 1.0) >= t), s.failed)
                for s, conf in photos]
        micro = kind_summary(kept)["micro"]
        curve.append({"threshold": t, "precision": micro["precision"], "recall": micro["recall"]})
    return curve

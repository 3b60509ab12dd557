"""A profile's results against the truth: accuracy, speed and memory as one JSON-ready dict.

Invariant: only results for photos in the truth set count, each once; figures come from
`scores` (accuracy), `review` (the review set, decided by the pipeline's own rule) and
`metrics.percentile` (latency), so the report and the daemon agree on them.
Latency and peak memory count the photos the model labelled; a failed one is counted by its error
code (`failures`), its time and memory kept out of those figures (photos/min still pays for it).
"""

from __future__ import annotations

from typing import Any

from bbsd.metrics import by_code, percentile
from bbsd.show.questions import Question
from bbsd.study import review, scores
from bbsd.study.truth import Truth

KINDS = ("characters", "props")


def summarise(name: str, truths: list[Truth], photos: dict[str, dict[str, Any]], loads: list[dict[str, Any]],
              questions: tuple[Question, ...], review_below: float) -> dict[str, Any]:
    """The profile's figures; `review_below` is the configured review threshold the capture figures are at."""
    rows = [(t, photos[str(t.file)]) for t in truths if str(t.file) in photos]
    samples = {k: [_sample(t, r, k) for t, r in rows] for k in KINDS}
    kinds = {k: scores.kind_summary(samples[k]) for k in KINDS}
    per_photo = list(zip(samples["characters"], samples["props"], strict=True))
    done = [r for _, r in rows if not r["error"]]
    ms = [r["ms"] for r in done]
    spent = [r["ms"] for _, r in rows]
    return {
        "profile": name,
        "model": loads[-1] if loads else None,
        "photos": len(rows), "failed": sum(bool(r["error"]) for _, r in rows),
        "failures": by_code(str(r["error"]) for _, r in rows if r["error"]),
        **kinds,
        "micro": scores.kind_summary([s for k in KINDS for s in samples[k]])["micro"],
        "exact": scores.ratio(sum(c.truth == c.predicted and p.truth == p.predicted for c, p in per_photo),
                              len(per_photo)),
        "hallucination_rate": scores.hallucination_rate(per_photo),
        "threshold_curve": scores.threshold_curve(
            [(samples[k][i], r.get("confidence", {}).get(k, {})) for k in KINDS for i, (_, r) in enumerate(rows)]),
        "review": review.capture([_reviewed(t, r) for t, r in rows], review_below),
        "reliability": review.reliability(_written(rows)),
        "questions": _questions(rows, questions),
        "latency_ms": {"p50": percentile(ms, 0.5), "p95": percentile(ms, 0.95)},
        "throughput_per_min": round(60_000 * len(spent) / sum(spent), 2) if spent and sum(spent) else None,
        "peak_rss_mb": _peak(r.get("rss_mb") for r in done),
        "peak_vram_mb": _peak(r.get("vram_mb") for r in done),
        "load_ms": loads[0]["load_ms"] if loads else None,  # the first load: a resumed run's reloads are warmer
        "evaluated_tokens": evaluated_tokens([r for _, r in rows]),
    }


def evaluated_tokens(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Prompt tokens evaluated per photo: the first photo after a model load (which pays for the prompt's
    fixed prefix, reference gallery included; the mean if a resumed run loaded more than once) and the
    mean of the other photos (the photo's image and the text after it, the prefix being cached)."""
    first = [r["evaluated_tokens"] for r in results if r.get("after_load") and r.get("evaluated_tokens") is not None]
    rest = [r["evaluated_tokens"] for r in results if not r.get("after_load") and r.get("evaluated_tokens") is not None]
    return {"first": round(sum(first) / len(first), 1) if first else None,
            "rest_mean": round(sum(rest) / len(rest), 1) if rest else None}


def _sample(truth: Truth, result: dict[str, Any], kind: str) -> scores.Sample:
    return scores.Sample(getattr(truth, kind), frozenset(result[kind]), bool(result["error"]))


def _reviewed(truth: Truth, result: dict[str, Any]) -> review.Photo:
    """A name given that is not there and a name there not given are one mistake each; scores a result
    line lacks (stored before they were recorded) are unknown."""
    mistakes = sum(len(getattr(truth, k) ^ frozenset(result[k])) for k in KINDS)
    return review.Photo(mistakes, result.get("scores"), bool(result["error"]))


def _written(rows) -> list[tuple[float, bool]]:
    """Each written name's confidence and whether it is really there (older result lines have these too)."""
    return [(c, name in getattr(t, k)) for t, r in rows for k in KINDS
            for name, c in r.get("confidence", {}).get(k, {}).items()]


def _questions(rows, questions: tuple[Question, ...]) -> dict[str, Any]:
    """Accuracy of every closed question over the photos whose truth answers it."""
    out = {}
    for q in questions:
        if q.closed_answers() is None:
            continue
        pairs = [(dict(t.answers)[q.key], r["answers"].get(q.key)) for t, r in rows if q.key in dict(t.answers)]
        if pairs:
            out[q.key] = scores.question_accuracy(pairs)
    return out


def _peak(values) -> float | None:
    known = [v for v in values if v is not None]
    return round(max(known), 1) if known else None

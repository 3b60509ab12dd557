"""`bbsd eval`'s outputs: a terminal table, `eval.json` and `eval.html` with inline SVG plots.

Invariant: all three are rendered from the same summaries; the HTML carries its data as JSON
too, so a plot can always be checked against the numbers.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from bbsd import atomic
from bbsd.console import codes_text
from bbsd.study import svg

COLUMNS = ("profile", "photos", "failed", "micro F1", "macro F1 ch", "macro F1 pr", "exact", "halluc.",
           "p50 ms", "p95 ms", "photos/min", "peak RSS MB", "load ms", "eval tok 1st", "eval tok rest")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def row(s: dict[str, Any]) -> list[str]:
    return [s["profile"], str(s["photos"]), str(s["failed"]), _fmt(s["micro"]["f1"]),
            _fmt(s["characters"]["macro"]["f1"]), _fmt(s["props"]["macro"]["f1"]), _fmt(s["exact"]),
            _fmt(s["hallucination_rate"]), _fmt(s["latency_ms"]["p50"], 1), _fmt(s["latency_ms"]["p95"], 1),
            _fmt(s["throughput_per_min"], 1), _fmt(s["peak_rss_mb"], 1), _fmt(s["load_ms"], 1),
            _fmt(s["evaluated_tokens"]["first"], 1), _fmt(s["evaluated_tokens"]["rest_mean"], 1)]


def table(summaries: list[dict[str, Any]]) -> str:
    """The summary as aligned text columns, one line per profile, then per-label F1 per profile."""
    rows = [list(COLUMNS)] + [row(s) for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for s in summaries:
        for kind in ("characters", "props"):
            per = ", ".join(f"{n} P={_fmt(v['precision'])} R={_fmt(v['recall'])} F1={_fmt(v['f1'])}"
                            for n, v in s[kind]["labels"].items())
            lines.append(f"{s['profile']} {kind}: {per or '-'}")
        mixed = ", ".join(f"{c['truth']} as {c['predicted']} ×{c['count']}"
                          for kind in ("characters", "props") for c in s[kind]["confusions"][:3])
        lines += [f"{s['profile']} confusions: {mixed}"] if mixed else []
        if s.get("failures"):  # kept out of latency and memory, which count labelled photos
            lines.append(f"{s['profile']} failed: {s['failed']} ({codes_text(s['failures'])})")
        lines += [f"{s['profile']} question {key}: accuracy {_fmt(q['accuracy'])} over {q['photos']} photos"
                  for key, q in s["questions"].items()]
        if s.get("threshold_curve"):
            steps = ", ".join(f"{c['threshold']:.1f}: P={_fmt(c['precision'], 2)} R={_fmt(c['recall'], 2)}"
                              for c in s["threshold_curve"])
            lines.append(f"{s['profile']} names kept at confidence ≥ threshold: {steps}")
        lines += [f"{s['profile']} {review_text(s.get('review'))}"]
        if s.get("reliability"):
            r = s["reliability"]
            lines.append(f"{s['profile']} calibration: ECE {r['ece']:.3f} over {r['names']} written names "
                         f"({r['right']} right)")
    return "\n".join(lines)


def review_text(r: dict[str, Any] | None) -> str:
    """`review at 0.6: 28 of 100 photos hold 41 of 45 mistakes (91%)`, and what was not counted."""
    if r is None:
        return "review: - (no photo has confidence scores: the backend reports no token probabilities)"
    share = "-" if r["caught_share"] is None else f"{r['caught_share']:.0%}"
    text = (f"review at {r['threshold']:g}: {r['flagged']} of {r['photos']} photos hold {r['caught']} of "
            f"{r['mistakes']} mistakes ({share}; {r['flagged']} photos could hold {r['best']})")
    apart = [f"{r['failed']} failed"] * bool(r["failed"]) + [f"{r['unknown']} without confidence scores"] * bool(
        r["unknown"])
    return f"{text}; not counted: {', '.join(apart)}" if apart else text


def plots(summaries: list[dict[str, Any]]) -> list[str]:
    shown = [s for s in summaries if s["latency_ms"]["p50"] is not None and s["micro"]["f1"] is not None]
    names = ", ".join(s["profile"] for s in summaries)
    out = [svg.scatter([(s["latency_ms"]["p50"], s["micro"]["f1"]) for s in shown],
                       f"Micro F1 vs latency p50, per profile ({names})", "Latency p50 (ms): faster to the left", "",
                       names=[s["profile"] for s in shown])]
    for s in summaries:
        labels = {f"{kind[:2]}:{n}": v["f1"] or 0.0 for kind in ("characters", "props")
                  for n, v in s[kind]["labels"].items()}
        out.append(svg.bars(list(labels.values()), f"Per-label F1 — {s['profile']}", list(labels), "",
                            "F1 per label (ch: character, pr: prop)"))
        if s.get("threshold_curve"):
            points = [(c["recall"], c["precision"]) for c in s["threshold_curve"]
                      if c["recall"] is not None and c["precision"] is not None]
            out.append(svg.scatter(points, f"Precision vs recall as the review threshold rises 0 → 0.9 — "
                                           f"{s['profile']}", "Recall (up the side: precision)", ""))
        out += _confidence_plots(s)
    return out


def _confidence_plots(s: dict[str, Any]) -> list[str]:
    """The review set's catch against its size over thresholds, and the reliability diagram."""
    out = []
    if s.get("review"):
        points, tags = _threshold_runs([c for c in s["review"]["curve"] if c["caught_share"] is not None])
        out.append(svg.shares(points, f"Mistakes caught vs photos sent to review, per threshold — {s['profile']}",
                              "Share of photos marked for review (up the side: share of the mistakes they hold)",
                              f"each dot named by the review_below values that give it; configured "
                              f"{s['review']['threshold']:g}; dashed: a random pick", tags))
    if s.get("reliability"):
        r = s["reliability"]
        out.append(svg.reliability([(b["low"], b["high"], b["accuracy"] or 0.0, b["names"]) for b in r["bins"]],
                                   f"Reliability of the written names' confidence — {s['profile']}",
                                   f"ECE {r['ece']:.3f} over {r['names']} names; on the dashed line confidence "
                                   "means what it says"))
    return out


def _threshold_runs(curve: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], list[str]]:
    """One point per distinct (flagged, caught) share, named by the runs of thresholds that give it
    ("0.05–0.4, 0.7–1": the set is not monotone in the threshold, a name not written counts from above)."""
    runs: dict[tuple[float, float], list[list[float]]] = {}
    last = None
    for c in curve:
        key = (c["flagged_share"], c["caught_share"])
        if key != last:
            runs.setdefault(key, []).append([])
        runs[key][-1].append(c["threshold"])
        last = key
    names = [", ".join(f"{r[0]:g}" if len(r) == 1 else f"{r[0]:g}–{r[-1]:g}" for r in rs) for rs in runs.values()]
    return list(runs), names


def html(summaries: list[dict[str, Any]], machine: str) -> str:
    data = json.dumps(summaries).replace("</", "<\\/")  # a name cannot close the script element
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row(s)) + "</tr>" for s in summaries)
    labels = "".join(
        f"<tr><td>{escape(s['profile'])}</td><td>{kind}</td><td>{escape(n)}</td><td>{_fmt(v['precision'])}</td>"
        f"<td>{_fmt(v['recall'])}</td><td>{_fmt(v['f1'])}</td><td>{v['tp']}/{v['fp']}/{v['fn']}</td></tr>"
        for s in summaries for kind in ("characters", "props") for n, v in s[kind]["labels"].items())
    mixed = "".join(
        f"<tr><td>{escape(s['profile'])}</td><td>{kind}</td><td>{escape(c['truth'])}</td>"
        f"<td>{escape(c['predicted'])}</td><td>{c['count']}</td></tr>"
        for s in summaries for kind in ("characters", "props") for c in s[kind]["confusions"])
    failed = "".join(f"<p class='failed'>{escape(s['profile'])} failed: {s['failed']} "
                     f"({escape(codes_text(s['failures']))}), not counted in latency or memory</p>"
                     for s in summaries if s.get("failures"))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>bbsd eval</title>"
        "<style>body{font-family:sans-serif;margin:2em auto;padding:0 2em;max-width:1100px}"
        "td,th{text-align:left;padding-right:1em}"
        "svg{display:block;margin:1.5em 0;border:1px solid #ddd}</style></head><body>"
        f"<h1>bbsd eval</h1><p id='machine'>{escape(machine)}</p>"
        f"<table id='profiles'><tr>{head}</tr>{body}</table>{failed}{''.join(plots(summaries))}"
        "<h2>Per label</h2><table id='labels'><tr><th>profile</th><th>kind</th><th>name</th><th>precision</th>"
        f"<th>recall</th><th>F1</th><th>tp/fp/fn</th></tr>{labels}</table>"
        "<h2>Confusions</h2><p>A name that is there but was missed, and a name given in its place on the same "
        "photo (the look-alikes show here), most common first.</p><table id='confusions'><tr><th>profile</th>"
        f"<th>kind</th><th>there</th><th>named instead</th><th>photos</th></tr>{mixed}</table>"
        f"{_review_tables(summaries)}"
        f"<script type='application/json' id='data'>{data}</script>"
        "</body></html>"
    )


def _review_tables(summaries: list[dict[str, Any]]) -> str:
    """The review set at the configured threshold, over thresholds, and the confidence bins."""
    shown = [s for s in summaries if s.get("review")]
    if not shown and not any(s.get("reliability") for s in summaries):
        return ""  # no backend here reports token probabilities
    head = "".join(
        f"<tr><td>{escape(s['profile'])}</td>" + "".join(f"<td>{v}</td>" for v in _review_cells(s["review"])) + "</tr>"
        for s in shown)
    curve = "".join(
        f"<tr><td>{escape(s['profile'])}</td><td>{c['threshold']:g}</td><td>{c['flagged']} ({_pct(c['flagged_share'])})"
        f"</td><td>{c['caught']} ({_pct(c['caught_share'])})</td><td>{c['best']} ({_pct(c['best_share'])})</td></tr>"
        for s in shown for c in s["review"]["curve"])
    bins = "".join(
        f"<tr><td>{escape(s['profile'])}</td><td>{b['low']:g}–{b['high']:g}</td><td>{b['names']}</td><td>{b['right']}</td>"
        f"<td>{_fmt(b['confidence'])}</td><td>{_fmt(b['accuracy'])}</td></tr>"
        for s in summaries if s.get("reliability") for b in s["reliability"]["bins"] if b["names"])
    return (
        "<h2>Review set</h2><p>The photos bbsd marks for review (a written name below <code>[xmp] review_below</code>, "
        "or a name not written at or above it), and the model's mistakes they hold: a name given that is not "
        "there, a name there not given. Failed photos (an error, not labels) and photos without confidence "
        "scores are not counted.</p><table id='review'><tr><th>profile</th><th>review_below</th><th>photos</th>"
        "<th>marked</th><th>mistakes</th><th>held by the marked</th><th>at most, as many photos</th>"
        "<th>not counted</th></tr>"
        f"{head}</table>"
        "<h3>Over thresholds</h3><table id='review-curve'><tr><th>profile</th><th>review_below</th>"
        f"<th>photos marked</th><th>mistakes they hold</th><th>at most, as many photos</th></tr>{curve}</table>"
        "<h3>Reliability</h3><table id='reliability'><tr><th>profile</th><th>confidence</th><th>names</th>"
        f"<th>right</th><th>mean confidence</th><th>share right</th></tr>{bins}</table>"
    )


def _review_cells(r: dict[str, Any]) -> list[str]:
    return [f"{r['threshold']:g}", str(r["photos"]), f"{r['flagged']} ({_pct(r['flagged_share'])})", str(r["mistakes"]),
            f"{r['caught']} ({_pct(r['caught_share'])})", f"{r['best']} ({_pct(r['best_share'])})",
            f"{r['failed']} failed, {r['unknown']} unknown"]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def write(out: Path, summaries: list[dict[str, Any]], machine: str) -> tuple[Path, Path]:
    """`eval.json` and `eval.html` in `out`, each written whole or not at all."""
    doc = {"machine": machine, "profiles": summaries}
    json_path, html_path = out / "eval.json", out / "eval.html"
    atomic.write_bytes(json_path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode(), durable=False)
    atomic.write_bytes(html_path, html(summaries, machine).encode(), durable=False)
    return json_path, html_path

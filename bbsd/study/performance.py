"""`bbsd report`: how fast and how heavy the model is on this machine, from the sidecars themselves.

Invariant: every figure comes from per-photo records (the JSON sidecars, which carry
timing, memory, model and time), so the report works for any past run without the
daemon or a log file; the HTML is one self-contained file with inline SVG plots. Latency and
memory figures and plots count labelled photos only; failed photos are counted by error code,
never drawn as a latency point or an RSS dip. Photos per minute divides by active time: pauses
longer than `timeline.IDLE_GAP` are left out of it, and shown on the plots as idle bands.
The page says "-" where a figure is unknown, as the terminal does.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from html import escape
from pathlib import Path

import psutil

from bbsd.arrive import scan
from bbsd.console import codes_text
from bbsd.errors import BbsdError
from bbsd.metrics import by_code, percentile
from bbsd.sidecars import record as sidecar
from bbsd.study import svg, timeline


@dataclass(frozen=True)
class Record:
    when: datetime
    status: str
    total_ms: float | None  # a failed photo's is not a latency figure, and may be unknown
    rss_mb: float | None
    vram_mb: float | None
    model: str
    endpoint: str | None = None  # the inference server that answered (remote backends)
    server_ms: float | None = None  # its client-side latency
    code: str | None = None  # a failed photo's error code

    @property
    def labelled(self) -> bool:
        return self.status == "labeled"


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """'90m', '2h', '3d', or an ISO date/time (UTC when no zone is given)."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return now - timedelta(**{unit: float(m[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BbsdError(f"--since {text!r} is not a duration or a date",
                        "use e.g. 2h, 30m, 1d or 2026-11-24T18:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def collect(folders: tuple[Path, ...], extensions: tuple[str, ...], since: datetime | None) -> list[Record]:
    records = []
    for photo in scan.photos(folders, extensions, recursive=True):
        doc = sidecar.read(photo)  # `<photo>.json`, or `<photo>.bbsd.json` beside another tool's JSON
        if not doc or doc.get("schema") != sidecar.SCHEMA_ID:
            continue
        try:
            record = _record(doc)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # a sidecar a person damaged, or a labelled photo's figure not measured (null)
        if not since or record.when >= since:
            records.append(record)
    return sorted(records, key=lambda r: r.when)


def _record(doc: dict) -> Record:
    when = datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00"))
    mem = doc.get("memory_mb") or {}
    served = doc.get("served") if isinstance(doc.get("served"), dict) else {}
    if doc["status"] == "error":  # counted by its code; its time and memory are not the model's work
        code = (doc.get("error") or {}).get("code") or "unknown"
        return Record(when, "error", None, None, None, doc.get("model", {}).get("file", "?"), code=str(code))
    return Record(when, doc["status"], float(doc["timing_ms"]["total"]), mem.get("rss"), mem.get("vram"),
                  doc.get("model", {}).get("file", "?"), served.get("endpoint"), served.get("latency_ms"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    system = f"{platform.system()} {platform.release()}"
    return f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM, {system}"


def summarise(records: list[Record]) -> dict[str, object]:
    """Latency and peak memory over the labelled photos; failures by error code (`failures`)."""
    done = [r for r in records if r.labelled]
    lat = [r.total_ms for r in done if r.total_ms is not None]
    rss = [r.rss_mb for r in done if r.rss_mb is not None]
    vram = [r.vram_mb for r in done if r.vram_mb is not None]
    active = timeline.active_seconds([r.when for r in records], [(r.total_ms or 0) / 1000 for r in records]) / 60
    return {
        "photos": len(records),
        "labelled": sum(r.status == "labeled" for r in records),
        "failed": sum(r.status == "error" for r in records),
        "failures": by_code(r.code or "" for r in records if r.status == "error"),
        "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95), "max_ms": max(lat) if lat else None,
        "per_minute": round(len(records) / active, 1) if active else None,  # over active time: no idle gaps
        "active_minutes": round(active, 2) if records else None,
        "idle_gap_minutes": timeline.IDLE_GAP.total_seconds() / 60,
        "peak_rss_mb": max(rss) if rss else None, "peak_vram_mb": max(vram) if vram else None,
        "models": sorted({r.model for r in records}),
        **({"endpoints": per_endpoint(records)} if any(r.endpoint for r in records) else {}),
        "first": records[0].when.isoformat(timespec="seconds") if records else None,
        "last": records[-1].when.isoformat(timespec="seconds") if records else None,
        "machine": machine(),
    }


def text_summary(s: dict[str, object]) -> str:
    def ms(key):
        return f"{s[key]:.0f} ms" if s[key] is not None else "-"

    return "\n".join([
        f"photos: {s['photos']} ({s['labelled']} labelled, {s['failed']} failed), {s['first']} .. {s['last']}",
        *([f"failed: {s['failed']} ({codes_text(s['failures'])})"] if s["failures"] else []),
        f"latency: p50 {ms('p50_ms')}, p95 {ms('p95_ms')}, max {ms('max_ms')}",
        f"throughput: {s['per_minute'] if s['per_minute'] is not None else '-'} photos/min over "
        f"{_duration(s['active_minutes']) if s['active_minutes'] is not None else '-'} active "
        f"(pauses over {s['idle_gap_minutes']:g} min left out)",
        f"peak memory: RSS {s['peak_rss_mb'] or '-'} MB, VRAM {s['peak_vram_mb'] or '-'} MB",
        f"model: {', '.join(s['models']) or '-'}",
        *[f"endpoint {url}: {e['photos']} photos, p50 {e['p50_ms']} ms, p95 {e['p95_ms']} ms"
          for url, e in s.get("endpoints", {}).items()],
        f"machine: {s['machine']}",
    ])


def per_endpoint(records: list[Record]) -> dict[str, dict[str, object]]:
    """Photos and client-side latency per inference-server endpoint."""
    out: dict[str, dict[str, object]] = {}
    for url in sorted({r.endpoint for r in records if r.endpoint}):
        lat = [r.server_ms for r in records if r.endpoint == url and r.server_ms is not None]
        out[url] = {"photos": sum(r.endpoint == url for r in records), "p50_ms": percentile(lat, 0.5),
                    "p95_ms": percentile(lat, 0.95)}
    return out


def html(records: list[Record], s: dict[str, object], tz: tzinfo | None = None) -> str:
    """The page: the summary table in words, then the plots over the periods of work, in `tz` (local time)."""
    tz = tz or datetime.now().astimezone().tzinfo
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _rows(s, tz))
    ends = "".join(f"<tr><td>{escape(url)}</td><td>{e['photos']}</td><td>{_num(e['p50_ms'])}</td>"
                   f"<td>{_num(e['p95_ms'])}</td></tr>" for url, e in s.get("endpoints", {}).items())
    if ends:
        rows += ("</table><h2>Endpoints</h2><table id='endpoints'><tr><th>Endpoint</th><th>Photos</th>"
                 f"<th>Latency p50 (ms)</th><th>Latency p95 (ms)</th></tr>{ends}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>bbsd report</title>"
        "<style>body{font-family:sans-serif;margin:2em auto;padding:0 2em;max-width:1100px}"
        "th{text-align:left;padding-right:1.5em;font-weight:600}td{font-variant-numeric:tabular-nums}"
        "svg{display:block;margin:1.5em 0;border:1px solid #ddd}</style></head><body>"
        f"<h1>bbsd report</h1><table id='summary'>{rows}</table>{''.join(plots(records, s, tz))}"
        f"<script type='application/json' id='data'>{json.dumps(s)}</script></body></html>"
    )


def plots(records: list[Record], s: dict[str, object], tz: tzinfo) -> list[str]:
    """Latency and memory per labelled photo over time, the latency histogram, photos in each minute."""
    done = [r for r in records if r.labelled]  # a failure is no latency or RSS
    note = f"labelled photos; {s['failed']} failed, not drawn ({codes_text(s['failures'])})" if s["failures"] else ""
    hist = svg.histogram([r.total_ms for r in done if r.total_ms is not None], "Latency histogram",
                         "Latency (ms)", note=note)
    if not records:
        return [svg.series([], "Latency per photo", [], "", "ms"), hist,
                svg.series([], "Engine memory (RSS) per photo", [], "", "MB"),
                svg.columns([], "Photos per minute", [], "", "photos")]
    axis = timeline.axis([r.when for r in records], svg.LEFT, svg.RIGHT, tz)
    ticks, bands = axis.ticks(), axis.bands()
    caption = axis.caption() + (f" · pauses over {s['idle_gap_minutes']:g} min drawn as idle bands" if bands else "")

    def per_period(value) -> list[list[tuple[float, float]]]:
        out: list[list[tuple[float, float]]] = [[] for _ in axis.spans]
        for r in done:
            if value(r) is not None:
                out[axis.period_of(r.when)].append((axis.x(r.when), value(r)))
        return out

    counts = Counter(r.when.replace(second=0, microsecond=0) for r in records)  # failed ones too: handled
    return [
        svg.series(per_period(lambda r: r.total_ms), "Latency per photo", ticks, caption, "ms", bands, note),
        hist,
        svg.series(per_period(lambda r: r.rss_mb), "Engine memory (RSS) per photo", ticks, caption, "MB", bands,
                   note),
        svg.columns([(lo, hi, counts[m]) for lo, hi, m in axis.minutes()], "Photos per minute", ticks, caption,
                    "photos", bands),
    ]


def _rows(s: dict[str, object], tz: tzinfo) -> list[tuple[str, str]]:
    """The summary in words and units; "-" for a figure not known, as on the terminal."""
    failed = f"{s['failed']} ({codes_text(s['failures'])})" if s["failures"] else str(s["failed"])
    active = (f"{_duration(s['active_minutes'])} (pauses over {s['idle_gap_minutes']:g} min left out)"
              if s["active_minutes"] is not None else "-")
    models = s["models"]
    return [
        ("Photos handled", str(s["photos"])), ("Labelled", str(s["labelled"])), ("Failed", failed),
        ("Latency p50 (ms)", _num(s["p50_ms"])), ("Latency p95 (ms)", _num(s["p95_ms"])),
        ("Latency max (ms)", _num(s["max_ms"])),
        ("Photos per minute", _num(s["per_minute"], 1)), ("Active time", active),
        ("Peak RSS (MB)", _num(s["peak_rss_mb"], 1)), ("Peak VRAM (MB)", _num(s["peak_vram_mb"], 1)),
        ("Models" if len(models) > 1 else "Model", ", ".join(models) or "-"),
        ("First photo", _when(s["first"], tz)), ("Last photo", _when(s["last"], tz)),
        ("Machine", str(s["machine"])),
    ]


def _num(v: object, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _duration(minutes: object) -> str:
    """`48 s`, `6.5 min`, `2 h 49 min`."""
    m = float(minutes)  # type: ignore[arg-type]
    if m < 1:
        return f"{m * 60:.0f} s"
    hours, rest = divmod(round(m), 60)
    return f"{m:.1f} min" if m < 60 else f"{hours} h {rest:02d} min"


def _when(iso: object, tz: tzinfo) -> str:
    """`Tue 24 Nov 2026, 19:02:09 UTC` in the report's zone."""
    if iso is None:
        return "-"
    local = datetime.fromisoformat(str(iso)).astimezone(tz)
    return f"{local:%a %d %b %Y, %H:%M:%S} {local.tzname() or ''}".rstrip()


def write(out: Path, records: list[Record]) -> dict[str, object]:
    s = summarise(records)
    out.write_text(html(records, s), encoding="utf-8")
    return s

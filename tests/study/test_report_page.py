"""`bbsd report`'s page reads like a report: words for names, "-" for unknown, rates over active time,
idle gaps as gaps, a clock on the time axes, plots as wide as the page.

The journal is a show night: two bursts of photos 30 minutes apart, three of them failed. Before,
the table said `p50_ms` and `None`, photos per minute was averaged over the idle half hour, the
latency and memory lines ran straight across it, the time axis had two ISO timestamps at its ends
and the plots were 720 px wide on any page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest

from bbsd.study import performance, report, svg, timeline
from bbsd.study.performance import Record

START = datetime(2026, 11, 24, 19, 2, 0, tzinfo=UTC)
FAILED = {(0, 5): "truncated", (0, 17): "not_an_image", (1, 3): "truncated"}
BURSTS = (24, 16)  # photos, one every 5 s
PAUSE = timedelta(minutes=30)


def night() -> list[Record]:
    records, t = [], START
    for burst, n in enumerate(BURSTS):
        for i in range(n):
            when = t + timedelta(seconds=5 * i)
            code = FAILED.get((burst, i))
            records.append(Record(when, "error", None, None, None, "m.gguf", code=code) if code else
                           Record(when, "labeled", 1000.0 + 10 * i, 2000.0 + i, None, "m.gguf"))
        t = when + PAUSE
    return records


class _Cells(HTMLParser):
    """The summary table's rows as (header, cell) text, and the page's visible text (no script data)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        self._in = tag if tag in ("th", "td", "script") else self._in

    def handle_endtag(self, tag):
        self._in = None if tag in ("th", "td", "script") else self._in

    def handle_data(self, data):
        if self._in == "script":
            return
        self.text.append(data)
        if self._in in ("th", "td"):
            self.rows[-1].append(data)


def _page(records: list[Record], tz=UTC) -> tuple[str, dict[str, str], str]:
    s = performance.summarise(records)
    page = performance.html(records, s, tz)
    cells = _Cells()
    cells.feed(page)
    return page, {r[0]: r[1] for r in cells.rows if len(r) == 2}, " ".join(cells.text)


def _empty_profile() -> dict:
    """An eval profile where nothing was measured."""
    return {"profile": "cpu", "photos": 0, "failed": 0, "failures": {}, "micro": {"f1": None},
            "characters": {"macro": {"f1": None}, "labels": {}, "confusions": []},
            "props": {"macro": {"f1": None}, "labels": {}, "confusions": []}, "exact": None,
            "hallucination_rate": None, "latency_ms": {"p50": None, "p95": None}, "throughput_per_min": None,
            "peak_rss_mb": None, "load_ms": None, "evaluated_tokens": {"first": None, "rest_mean": None},
            "questions": {}}


def _charts(page: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", page, flags=re.S)


def test_the_summary_table_names_figures_in_words_with_units():
    _, table, text = _page(night())
    text = text.replace(table["Machine"], "")  # a host name may hold anything
    assert list(table) == ["Photos handled", "Labelled", "Failed", "Latency p50 (ms)", "Latency p95 (ms)",
                           "Latency max (ms)", "Photos per minute", "Active time", "Peak RSS (MB)", "Peak VRAM (MB)",
                           "Model", "First photo", "Last photo", "Machine"]
    assert table["Failed"] == "3 (truncated 2, not_an_image 1)"  # failures stay counted by code
    assert table["First photo"] == "Tue 24 Nov 2026, 19:02:00 UTC"
    assert table["Photos per minute"] == "12.5" and table["Active time"] == "3.2 min (pauses over 5 min left out)"
    assert not re.search(r"\b[a-z0-9]+_[a-z0-9_]+\b", text.replace("not_an_image", "")), text  # no raw key


def test_an_unknown_figure_reads_as_on_the_terminal_on_both_pages():
    records = night()
    _, table, text = _page(records)
    assert table["Peak VRAM (MB)"] == "-"  # the CPU measured no VRAM
    assert "VRAM - MB" in performance.text_summary(performance.summarise(records))
    assert "None" not in text and "null" not in text
    _, empty, empty_text = _page([])
    assert empty["Latency p50 (ms)"] == empty["Photos per minute"] == empty["First photo"] == empty["Model"] == "-"
    assert "None" not in empty_text
    cells = _Cells()
    cells.feed(report.html([_empty_profile()], "here"))  # `bbsd eval`'s page says it the same way
    assert "None" not in " ".join(cells.text) and "-" in cells.rows[1]


def test_photos_per_minute_count_active_time_only():
    records = night()
    s = performance.summarise(records)
    # each burst from the start of its first photo (1 s before its record) to its last photo's record
    active = sum(5 * (n - 1) + 1.0 for n in BURSTS) / 60
    assert s["active_minutes"] == round(active, 2) and s["idle_gap_minutes"] == 5
    assert s["per_minute"] == round(len(records) / active, 1) == 12.5  # over the whole evening: 1.2
    assert "12.5 photos/min over 3.2 min active (pauses over 5 min left out)" in performance.text_summary(s)


def test_a_pause_longer_than_the_idle_gap_starts_a_new_period():
    t = [START, START + timeline.IDLE_GAP, START + 2 * timeline.IDLE_GAP + timedelta(seconds=1)]
    assert timeline.periods(t) == [range(0, 2), range(2, 3)]
    assert timeline.active_seconds(t, [2.0, 2.0, 2.0]) == 300 + 2 + 2  # a lone photo counts its own time


def test_lines_break_at_an_idle_gap_which_is_drawn_as_a_gap():
    page, _, _ = _page(night())
    latency, _, memory, per_minute = _charts(page)
    for chart in (latency, memory):
        segments = re.findall(r'<polyline data-kind="segment" points="([^"]+)"', chart)
        xs = [[float(p.split(",")[0]) for p in seg.split()] for seg in segments]
        assert [len(x) for x in xs] == [BURSTS[0] - 2, BURSTS[1] - 1]  # labelled photos of each burst
        (lo, hi), = (map(float, g) for g in re.findall(r'data-kind="gap" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"',
                                                        chart))
        assert max(xs[0]) < lo and min(xs[1]) > lo + hi  # nothing drawn in or across the band
        assert "idle</text>" in chart and ">30 min</text>" in chart
    assert per_minute.count('data-kind="gap"') == 1
    assert sum(int(v) for v in re.findall(r'data-value="(\d+)"', per_minute)) == len(night())


def test_time_axes_show_the_clock_and_the_date_once():
    page, _, _ = _page(night())
    for chart in (c for i, c in enumerate(_charts(page)) if i != 1):  # the histogram's axis is latency
        ticks = re.findall(r'text-anchor="middle">([^<]*)</text>', chart)
        clock = [t for t in ticks if re.fullmatch(r"\d\d:\d\d", t)]
        assert len(clock) >= 4 and clock == sorted(clock) and clock[0] == "19:02", ticks
        assert "Time (UTC), Tue 24 Nov 2026" in chart and chart.count("2026") == 1
        assert "T19:" not in chart and "+00:00" not in chart
    late = [Record(START + timedelta(hours=h), "labeled", 900.0, 1.0, None, "m") for h in (0, 14)]
    axis_text = _charts(_page(late, timezone(timedelta(hours=1), "CET"))[0])[0]
    assert ">20:02</text>" in axis_text and ">25 Nov 10:02</text>" in axis_text  # the new day named once
    assert "Time (CET), Tue 24 Nov – Wed 25 Nov 2026" in axis_text


def test_plots_scale_to_the_page_width():
    page, _, _ = _page(night())
    eval_page = report.html([], "here")
    for chart in _charts(page) + _charts(eval_page):
        head = chart[:chart.index(">")]
        assert 'width="100%"' in head and f'viewBox="0 0 {svg.W} ' in head and "height=" not in head


def test_the_report_in_headless_chromium_fills_the_page_and_shows_the_gap(tmp_path):
    """The screenshot as an editor sees it, 1000 px wide: each plot's frame spans the page, and latency dots
    stand on both sides of a grey idle band."""
    from PIL import Image

    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        pytest.skip("no headless Chromium: `make tools` installs chromium-headless-shell")
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(_page(night())[0], encoding="utf-8")
    subprocess.run([browser, "--no-sandbox", "--disable-gpu", f"--screenshot={png}", "--window-size=1000,900",
                    "--hide-scrollbars", page.as_uri()], capture_output=True, timeout=120, check=True)
    shot = Image.open(png).convert("RGB")
    w, h = shot.size
    rows = [shot.crop((0, y, w, y + 1)).tobytes() for y in range(h)]

    def where(test) -> list[int]:
        return [x for row in rows for x in range(w) if test(*row[3 * x:3 * x + 3])]

    frame = where(lambda r, g, b: r == g == b == 0xDD)  # the plots' 1 px border
    shades = Counter(where(lambda r, g, b: r == g == b == 0xF3))
    grey = [x for x, n in shades.items() if n > 100]  # the idle band's columns (text edges have a few)
    blue = where(lambda r, g, b: b > 200 and r < 80 and 90 < g < 140)  # #1f6feb: the dots
    assert max(frame) - min(frame) > 0.9 * w, (min(frame), max(frame))  # was 722 px of 1000
    assert grey and min(blue) < min(grey) and max(blue) > max(grey), (min(blue), min(grey), max(grey), max(blue))

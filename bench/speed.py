"""Benchmark (`make bench`): bbsd's time per photo against every other way to run the same model, in one run.

On the same machine, model files, distinct photos, prompt, reply grammar, threads, GPU layers and
output limit, it measures per photo:
  (a) bbsd end to end: `bbsd run`, file settled → sidecar written (the production path);
  (b) the bare engine in this process, prefix cached: only the unavoidable work (and with the
      prefix re-evaluated, to show what the cache saves);
  (c) `llama-server` with its prompt cache, over loopback HTTP (bench/baselines.py);
  (d) `llama-mtmd-cli` once per photo;
  (e) llama-cpp-python's plain `MTMDChatHandler` loop;
then a 200-photo burst into `bbsd run`: the newest photo's settled → sidecar time against one
photo's. The ratios are the figures; absolute times hold for this machine only. Distinct photos
throughout (an identical image would flatter any cache keyed on pixels). Random-weight models of
real shapes (labels meaningless; loading, image encoding, grammar and timing real): `tiny` (the
test pair), `smol` (SmolVLM-256M's dimensions), `2b` (a 2B-class LLaVA-style shape: CLIP-L/336,
576 image tokens, a 1.5B f16 text model; for a GPU). Writes its table into docs/benchmarks.md.

Run: .venv/bin/python -m bench.speed [--shapes tiny,smol] [--photos 12] [--gpu-layers 0|-1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bbsd import config, logs
from bbsd.engine import prompt
from bbsd.engine.llama.engine import flash_attention
from bbsd.models import tiny as tiny_model
from bbsd.sidecars import record as sidecar
from bench import baselines, steps
from bench.fixtures import PHOTO_SIZE, SHAPES, gpu, photos, write_config
from bench.results import machine, update_section

REPO = Path(__file__).resolve().parents[2]
class Engine:
    """The bare engine in this process: what bbsd's worker does per photo, without the daemon
    (the photos decoded beforehand: `images`)."""

    def __init__(self, cfg: Path, images: dict[Path, Image.Image], prefix_cache: bool) -> None:
        from bbsd.engine.registry import open_in_process

        settings = config.load(cfg, environ={"BBSD_ENGINE_PREFIX_CACHE": str(prefix_cache).lower()})
        self._labeler, self._images = open_in_process(settings), images
        self._p = prompt.build(settings.catalog)

    def one(self, photo: Path) -> dict:
        t0 = time.perf_counter()
        r = self._labeler.infer(self._images[photo], self._p, attempt=0, cancelled=lambda: False)
        return {"ms": (time.perf_counter() - t0) * 1000, "prompt": r.evaluated_tokens, "out": r.output_tokens,
                "gen_ms": r.generate_ms, "sampled": r.sampled_tokens}

    def close(self) -> None:
        self._labeler.close()


def engine_loop(cfg: Path, images: list[Image.Image], prefix_cache: bool) -> list[dict]:
    """The bare engine over these images, one after the other."""
    keys = [Path(f"image-{i}") for i in range(len(images))]
    engine = Engine(cfg, dict(zip(keys, images, strict=True)), prefix_cache)
    try:
        return [engine.one(k) for k in keys]
    finally:
        engine.close()


class Daemon:
    """`bbsd run` as in production, as a subprocess; photos are hard-linked into its inbox."""

    def __init__(self, cfg: Path) -> None:
        self.inbox = config.load(cfg, environ={}).watch.folders[0]
        self.log = Path(cfg).with_suffix(".log")
        env = {**os.environ, "BBSD_LOG_LEVEL": "info"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bbsd", "run", "--config", str(cfg)], stdout=out,
                                         stderr=subprocess.STDOUT, env=env)
        _wait(lambda: "daemon.ready" in self.log.read_text(), 600)

    def drop(self, f: Path) -> Path:
        target = self.inbox / f.name
        os.link(f, target)
        return target

    def one(self, photo: Path) -> dict:
        """(a): one photo, settled → sidecar."""
        target = self.drop(photo)
        _wait(lambda: sidecar.path_for(target).exists(), 600)
        return _record(target)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


def interleave(setups: list[tuple[str, object, int]], files: list[Path]) -> dict[str, list[dict]]:
    """Every setup on the same photos, in turns: photo 1 through each setup, then photo 2, the order of
    the setups rotated each round, so that a machine slowing down during the run (a busy neighbour, a
    warming CPU) weighs on every setup alike. Each setup is (name, object with `one`, photos it takes)."""
    rows: dict[str, list[dict]] = {name: [] for name, _, _ in setups}
    for i, f in enumerate(files):
        turn = [(name, setup) for name, setup, limit in setups if i < limit]
        k = i % len(turn)
        for name, setup in turn[k:] + turn[:k]:
            rows[name].append(setup.one(f))
    return rows


def _record(target: Path) -> dict:
    doc = json.loads(sidecar.path_for(target).read_text())
    if doc["status"] != "labeled":  # an error sidecar's timing is not a photo's: never a row of the table
        raise RuntimeError(f"{target.name} was not labelled: {doc.get('error')}")
    t = doc["timing_ms"]
    return {"ms": t["total"] + t.get("queue_wait", 0.0), "prompt": doc["tokens"].get("evaluated"),
            "out": doc["tokens"]["output"], "rss": doc["memory_mb"]["rss"], "wait": t.get("queue_wait", 0.0),
            "decode": t.get("decode"), "inference": t.get("inference")}


def _burst(daemon: Daemon, burst: list[Path]) -> dict:
    t0 = time.monotonic()
    targets = [daemon.drop(f) for f in burst]
    _wait(lambda: all(sidecar.path_for(t).exists() for t in targets), 3600)
    per_s = len(targets) / (time.monotonic() - t0)
    newest = _record(targets[-1])
    done = sorted(targets, key=lambda t: sidecar.path_for(t).stat().st_mtime_ns)  # the order they were labelled in
    return {"per_s": per_s, "newest": newest["ms"], "rank": done.index(targets[-1]) + 1, "wait": newest["wait"]}


def burst_run(cfg: Path, burst: list[Path]) -> dict:
    """A burst dropped at once into a fresh daemon (`_burst`)."""
    daemon = Daemon(cfg)
    try:
        return _burst(daemon, burst)
    finally:
        daemon.close()


def memory_run(cfg: Path, files: list[Path], marks: tuple[int, ...] = (100, 1000)) -> dict[int, float]:
    """The worker's RSS after 100 and after 1,000 photos (recycling off), from the sidecars in labelling order."""
    daemon = Daemon(cfg)
    try:
        targets = [daemon.drop(f) for f in files]
        _wait(lambda: all(sidecar.path_for(t).exists() for t in targets[-50:]), 3600)
        _wait(lambda: all(sidecar.path_for(t).exists() for t in targets), 3600)
    finally:
        daemon.close()
    events = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.startswith("{")]
    rss = [e["rss_mb"] for e in events if e.get("event") == "photo.labeled"]  # in labelling order
    return {m: rss[m - 1] for m in marks if m <= len(rss)}


def _wait(predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError("benchmark step timed out")


def summary(rows: list[dict], warm: int = 2) -> dict:
    """Medians over the photos after the first `warm` (load and the first prefix are not per-photo costs)."""
    rows = rows[warm:] or rows
    med = {k: statistics.median(r[k] for r in rows if r.get(k) is not None)
           for k in ("ms", "prompt", "out", "gen_ms", "sampled", "wait", "decode", "inference")
           if any(r.get(k) is not None for r in rows)}
    return med


def at_tokens(s: dict, out: float) -> float:
    """Per-photo time with the generation part rescaled to `out` output tokens (equal work), where known."""
    if not s.get("gen_ms") or not s.get("out"):
        return s["ms"]
    return s["ms"] - s["gen_ms"] + s["gen_ms"] / s["out"] * out


def tools() -> tuple[Path, Path] | None:
    """llama-server and llama-mtmd-cli, built once from the vendored llama.cpp (None if the build fails).

    BBSD_LLAMA_TOOLS names a folder holding both instead (a CUDA build from bench/cuda.sh).
    """
    if os.environ.get("BBSD_LLAMA_TOOLS"):
        folder = Path(os.environ["BBSD_LLAMA_TOOLS"])
        found = folder / "llama-server", folder / "llama-mtmd-cli"
        return found if all(os.access(f, os.X_OK) for f in found) else None
    r = subprocess.run([str(REPO / "build" / "llama-server.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"llama-server.sh failed, baselines (c) and (d) skipped:\n{r.stderr[-1500:]}", file=sys.stderr)
        return None
    server = Path(r.stdout.strip().splitlines()[-1])
    return server, server.parent / "llama-mtmd-cli"


def run_shape(shape: str, args, tmp: Path, binaries: tuple[Path, Path] | None) -> list[str]:
    from bbsd.photo import decode as imaging

    models = tiny_model.write_pair(tmp / f"models-{shape}", SHAPES[shape])
    size = _size(args.photo_size)
    files = photos(tmp / f"photos-{shape}", args.photos, size=size)
    burst = photos(tmp / f"burst-{shape}", args.burst, start=args.photos, size=size)
    images = {f: imaging.decode(f, 768).image for f in files}
    cfg = write_config(tmp / shape, models, args.catalog, args, parallel=args.parallel_default)
    p = prompt.build(config.load(cfg, environ={}).catalog)
    # every baseline with the flash attention bbsd's text model gets by default on this device (the same kernels)
    common = {"max_tokens": args.max_tokens, "threads": args.threads or _threads(), "gpu_layers": args.gpu_layers,
              "n_ctx": args.n_ctx, "flash": flash_attention("auto", args.gpu_layers)[0]}
    with contextlib.ExitStack() as stack:
        def start(make, *a, **kw):
            setup = make(*a, **kw)
            stack.callback(setup.close)
            return setup

        daemon = start(Daemon, cfg)
        engine = start(Engine, cfg, images, True)
        # The tokens bbsd's engine writes (median, after the warm-up photos): the baselines without a
        # grammar write exactly that many.
        exact = round(summary([engine.one(f) for f in files])["out"])
        setups = [("(a) bbsd run, settled → sidecar", daemon, len(files)),
                  ("(b) bare engine, prefix cached", engine, len(files)),
                  ("    engine, prefix re-evaluated", start(Engine, cfg, images, False), len(files))]
        if binaries:
            log = tmp / f"server-{shape}.log"
            setups += [("(c) llama-server, prompt cache, HTTP, no grammar",
                        start(baselines.Server, binaries[0], models, p, log=log, exact_tokens=exact, **common),
                        len(files)),
                       ("    llama-server, with bbsd's grammar",
                        start(baselines.Server, binaries[0], models, p, log=log, **common), len(files)),
                       ("(d) llama-mtmd-cli per photo",
                        start(baselines.Cli, binaries[1], models, p, folder=tmp, **common), args.cli_photos)]
        setups += [("(e) MTMDChatHandler loop, no grammar",
                    start(baselines.Handler, models, p, exact_tokens=exact, **common), len(files)),
                   ("    MTMDChatHandler, with bbsd's grammar", start(baselines.Handler, models, p, **common),
                    len(files))]
        rows = interleave(setups, files)
        setups = [(name, summary(rows[name], warm=1 if name.startswith("(d)") else 2)) for name, _, _ in setups]
        bbsd = setups[0][1]
        lines = [*_rows(shape, setups), _parts_row(shape, bbsd)]
        print("\n".join(lines), flush=True)  # as measured: a run cut short still shows what it had
        if burst:
            newest = _burst(daemon, burst)
            lines.append(f"| {shape} | newest of a {args.burst}-photo burst, settled → sidecar | "
                         f"{newest['newest']:.0f} | | | | | | {newest['newest'] / bbsd['ms']:.2f} × one photo (a) |")
            lines.append(_burst_row(shape, args.burst, f"[engine] parallel {args.parallel_default}", newest, bbsd))
            print("\n".join(lines[-2:]), flush=True)
    levels = [int(v) for v in args.parallel.split(",") if v]
    if levels:  # the engine alone at each level first: where a batch step's time goes
        sample = [imaging.decode(f, 768).image for f in burst[:max(16, 2 * max(levels)) + 1]]
        alone: dict | None = None
        for n in levels:
            b = steps.engine_burst(cfg, sample, n)
            alone = b if n == 1 else alone
            lines.append(steps.row(shape, len(sample) - 1, n, b, alone))
            print(lines[-1], flush=True)
    for n in levels:
        more = burst[:args.parallel_burst] if len(burst) >= args.parallel_burst else photos(
            tmp / f"burst-{shape}-{n}", args.parallel_burst, start=10_000 * (n + 1), size=size)
        # the main burst's photos again: each daemon is fresh (nothing cached), and they are distinct
        b = burst_run(write_config(tmp / f"{shape}-parallel{n}", models, args.catalog, args, parallel=n), more)
        lines.append(_burst_row(shape, args.parallel_burst, f"parallel {n}", b, bbsd))
        print(lines[-1], flush=True)
    return lines


def _rows(shape: str, setups: list[tuple[str, dict]]) -> list[str]:
    """The table's rows, each setup also at the bare engine's output tokens and as ratios (bbsd's
    ratios hold it against (c) and (e) without a grammar)."""
    out = setups[1][1]["out"]  # (b), the bare engine
    base = {name[:3]: at_tokens(s, out) for name, s in setups if name[:3] != "   "}
    return [f"| {shape} | {name} | {s['ms']:.0f} | {s.get('prompt', 0):.0f} | {s.get('out', 0):.0f} "
            f"| {at_tokens(s, out):.0f} | {_ratio(at_tokens(s, out), base.get('(c)'))} "
            f"| {_ratio(at_tokens(s, out), base['(e)'])} | {at_tokens(s, out) / base['(b)']:.2f} |"
            for name, s in setups]


def _parts_row(shape: str, a: dict) -> str:
    """Where (a)'s time goes, from its sidecars (medians, so the parts need not add up exactly)."""
    rest = a["ms"] - a["wait"] - a["decode"] - a["inference"]
    return (f"| {shape} | (a)'s photo: queue wait {a['wait']:.0f} ms, hashed and decoded (in the decoder "
            f"process, file → 768 px) {a['decode']:.0f} ms, engine {a['inference']:.0f} ms, the rest {rest:.0f} ms "
            "| | | | | | | |")


def _burst_row(shape: str, n: int, setting: str, b: dict, one: dict) -> str:
    single = 1000 / one["ms"]  # photos per second, one photo at a time (a)
    return (f"| {shape} | {n}-photo burst, {setting}: {b['per_s']:.2f} photos/s, {b['per_s'] / single:.2f} × one at a "
            f"time; newest settled → sidecar {b['newest']:.0f} ms (labelled {_nth(b['rank'])}, {b['wait']:.0f} ms "
            f"of it queued) | | | | | | | {b['newest'] / one['ms']:.2f} × (a) |")


def _nth(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base else "–"


def _threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="tiny,smol")
    ap.add_argument("--photos", type=int, default=12, help="distinct photos per setup (the first two are warm-up)")
    ap.add_argument("--photo-size", default="x".join(map(str, PHOTO_SIZE)), help="WxH of the generated JPEGs")
    ap.add_argument("--cli-photos", type=int, default=4, help="photos for llama-mtmd-cli (a model load each)")
    ap.add_argument("--burst", type=int, default=200, help="photos dropped at once after the single-photo run")
    ap.add_argument("--catalog", type=int, default=5, help="catalog entries (characters + props)")
    # Random weights write every string to its cap: 1,024 lets every reply complete (a truncated one is
    # an error sidecar in bbsd run, and no row); all setups then generate the same reply length.
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="0: one per physical core")
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--parallel-default", type=int, default=0, help="[engine] parallel of the main run (0: the "
                    "device's default)")
    ap.add_argument("--parallel", default="", help="also drop a burst into a daemon with each [engine] parallel "
                    "in this list (1,2,8): burst throughput against one photo at a time")
    ap.add_argument("--parallel-burst", type=int, default=100, help="photos in each of those bursts")
    ap.add_argument("--memory", type=int, default=0, help="also label this many photos (1000) for RSS after 100 vs all")
    ap.add_argument("--section", default="speed", help="the docs/benchmarks.md section to write")
    args = ap.parse_args()
    logs.configure("warning", "console")
    binaries = tools()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for shape in args.shapes.split(","):
            rows += run_shape(shape, args, tmp, binaries)
        if args.memory:
            cfg = write_config(tmp / "memory", tiny_model.write_pair(tmp / "models-memory"), args.catalog, args)
            rss = memory_run(cfg, photos(tmp / "photos-memory", args.memory, size=(1024, 768)), (100, args.memory))
            notes.append(f"Memory, tiny model, recycling off: worker RSS after 100 photos {rss[100]:.1f} MB, after "
                         f"{args.memory} {rss[args.memory]:.1f} MB ({(rss[args.memory] / rss[100] - 1) * 100:+.1f} %).")
    body = "\n".join([
        f"Machine: {machine()}; GPU: {gpu()}. Threads: {args.threads or _threads()}, gpu_layers {args.gpu_layers}, "
        f"context {args.n_ctx}, catalog of {args.catalog} entries, output limit {args.max_tokens} tokens, temperature "
        f"0, bbsd's reply grammar in every setup, flash attention for the text model "
        f"{ {True: 'on', False: 'off', None: 'auto'}[flash_attention('auto', args.gpu_layers)[0]]} in every setup "
        f"(bbsd's default on this device). {args.photos} distinct {args.photo_size.replace('x', '×')} "
        "camera-like JPEGs per setup, sent as files to every setup but the bare engine (medians after the "
        f"first two; llama-mtmd-cli {args.cli_photos}, after the first). *prompt* = prompt tokens evaluated per photo. "
        "*at equal tokens*: the per-photo time with its generation rescaled to the bare engine's output tokens "
        "(where the setup reports its generation time); the ratios use it. The ratio columns hold bbsd against "
        "(c) and (e) *without a grammar*, writing exactly the bare engine's number of tokens: a random model's "
        "favourite token is often one the grammar refuses, and then those tools mask the whole vocabulary, "
        "which a trained model writing valid JSON would rarely make them do; without a grammar they do the "
        "least work they could (the rows *with bbsd's grammar* show what the random model costs them).",
        "",
        "| shape | setup | ms / photo | prompt tokens | output tokens | ms at equal tokens | × llama-server "
        "| × MTMDChatHandler | × bare engine |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows, "", *notes,
    ])
    update_section(args.section, body, "bench/speed.py")
    print(body)


if __name__ == "__main__":
    main()

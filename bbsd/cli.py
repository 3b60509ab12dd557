"""Command line: `bbsd run | label | check | report | eval | truth | demo`.

Invariant: this is the one error boundary. Lower layers raise `BbsdError` with a hint;
`main` prints it as one line on stderr and exits with its code. Unknown exceptions print
one line too, unless BBSD_DEBUG is set or pytest is running, where they re-raise.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import typer

from bbsd import __version__, console


def _flags_take_no_value() -> None:
    """typer 0.29 prints a type after every option in help, flags too (`--help <bool>`), as if
    they took a value; a flag shows none."""
    from typer.core import TyperOption

    typed = getattr(TyperOption, "display_type_rich", None)
    if typed is None:  # a typer without it (pinned <0.30): nothing to fix
        return
    TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else typed(self, ctx)


_flags_take_no_value()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="bbsd labels show photos with a local vision model and writes a sidecar beside each one.\n\n"
    "Start with `bbsd check --config config.toml`, then `bbsd run --config config.toml`.",
)

CONFIG = typer.Option(
    Path("config.toml"), "--config", "-c", envvar="BBSD_CONFIG", show_default=True,
    help="Configuration file (TOML). Also $BBSD_CONFIG.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bbsd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit (add --verbose for llama.cpp and its backends)."),
) -> None:
    """Stage-side photo labelling daemon of the Balanced Blended Space show."""


def _setup(config: Path):
    from bbsd import config as config_mod
    from bbsd import logs

    settings = config_mod.load(config)
    logs.configure(settings.log.level, settings.log.format)
    return settings


def _open(settings, lazy: bool = False, warm_up: bool = False):
    """The pipeline with the model loaded now (warmed up for `run`), or (lazy) at the first photo that needs it."""
    import structlog

    from bbsd.engine import prompt
    from bbsd.engine.registry import SHIPPED, LazyLabeler, open_labeler
    from bbsd.pipeline import Pipeline

    labeler = LazyLabeler(settings) if lazy else open_labeler(settings, warm_up=warm_up)
    if labeler.info.backend not in SHIPPED:  # a plugin's (the suite's fake): say whose labels these are
        structlog.get_logger("bbsd").warning("engine.plugin_backend", backend=labeler.info.backend,
                                             note="labels come from a plugin's backend, not one bbsd ships")
    return Pipeline(labeler, settings, prompt.for_settings(settings))


@app.command()
def run(config: Path = CONFIG) -> None:
    """Watch the folders and label every new photo (foreground; stop with Ctrl-C or SIGTERM, reload with SIGHUP)."""
    import threading

    import structlog

    from bbsd import checks, instance
    from bbsd.service import state
    from bbsd.service.daemon import Daemon
    from bbsd.service.monitor import Monitor
    from bbsd.service.sdnotify import ExtendingStartTimeout, Notifier

    stop, reload = threading.Event(), threading.Event()
    # Handlers only set flags, and are installed before the model loads, so a stop during a
    # long load still exits cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    settings = _setup(config)
    checks.folders(settings)
    if (note := checks.weights(settings)) is not None:  # bbsd's random test model, or its toy: said once
        getattr(structlog.get_logger("bbsd"), note.level)("model.weights", weights=note.weights,
                                                          message=note.message, hint=note.hint)
    folder = instance.folder_for(settings.service.state_dir, settings.source)
    state.claim(folder, settings.source)
    notifier = Notifier()
    with ExtendingStartTimeout(notifier):
        pipeline = _open(settings, warm_up=True)  # READY only once the first photo will be fast
    monitor = Monitor(folder, pipeline.labeler.info.file, busy_limit_s=settings.worker.timeout_seconds,
                      notifier=notifier, config=settings.source)
    try:
        if not stop.is_set():
            daemon = Daemon(settings, pipeline, stop=stop, monitor=monitor, progress=console.BacklogProgress())
            daemon.reload = reload
            daemon.run()
    finally:
        pipeline.close()


@app.command()
def label(
    photos: list[Path] = typer.Argument(..., help="Photo files (or folders) to label: one or more.",
                                        metavar="PHOTO"),
    config: Path = CONFIG,
    force: bool = typer.Option(False, "--force", help="Relabel even when the sidecar is up to date."),
) -> None:
    """Label the named photos once and print one line per photo; exit 1 if any failed."""
    from bbsd.pipeline import Status

    settings = _setup(config)
    targets = _expand(photos, settings)
    pipeline = _open(settings, lazy=True)  # photos with current sidecars need no model
    failed = 0
    try:
        with console.Progress(len(targets)) as advance:
            for path in targets:
                outcome = pipeline.process(path, force=force)
                failed += outcome.status not in (Status.LABELED, Status.SKIPPED)
                advance(console.outcome_line(outcome))
    finally:
        pipeline.close()
    raise typer.Exit(1 if failed else 0)


def _expand(photos: list[Path], settings) -> list[Path]:
    """The photos named, and those under the folders named. Nothing is resolved through a link: a link
    named here is handed on as it is and refused as the daemon refuses one (a symlink among `W/*` must not
    lead `bbsd label` out of the folder), and folders are walked without following links."""
    from bbsd.arrive import scan
    from bbsd.errors import PhotoError

    out = []
    for p in photos:
        here = Path(os.path.abspath(p))  # absolute, but not resolved
        if here.is_symlink() or here.is_file():
            out.append(here)
        elif here.is_dir():
            out += sorted(scan.photos((here,), settings.watch.extensions, True, follow_roots=False))
        elif here.exists():
            out.append(here)  # a FIFO or a device: refused by the pipeline without being opened
        else:
            raise PhotoError("missing", f"{p} does not exist", "check the path")
    return out


@app.command()
def check(config: Path = CONFIG) -> None:
    """Validate the configuration and watch folders, load the model and label a test image; exit 0 or 2."""
    from bbsd import checks

    # The report below is the output; the engine's info events would interleave with it
    # (in a pipe, as JSON). Warnings and errors still show; BBSD_LOG_LEVEL=info shows all.
    os.environ.setdefault("BBSD_LOG_LEVEL", "warning")
    settings = _setup(config)
    asked = f", {len(settings.questions)} questions" if settings.questions else ""
    refs = settings.catalog.reference_count()
    shown = f", {refs} reference photos ({settings.prompt.references})" if refs else ""
    typer.echo(f"config {settings.source}: ok ({len(settings.catalog.characters)} characters, "
               f"{len(settings.catalog.props)} props{asked}{shown})")
    for line in checks.folders(settings):
        typer.echo(line)
    for line in checks.backend(settings):
        typer.echo(line)
    pipeline = _open(settings)
    try:
        info = pipeline.labeler.info
        files = f"{info.file} + {info.mmproj}" if info.mmproj else info.file
        typer.echo(f"model {files}: ok (loaded with backend {info.backend})")
        typer.echo(checks.label_probe(pipeline.labeler, pipeline.prompt, settings))
    finally:
        pipeline.close()


@app.command()
def status(config: Path = CONFIG, as_json: bool = typer.Option(False, "--json", help="Print the raw status.")) -> None:
    """Show what the running daemon is doing (from its status file; no network port). Exit 3 when not running."""
    import json

    from bbsd import config as config_mod
    from bbsd import instance
    from bbsd.service import state

    settings = config_mod.load(config)
    folder = instance.folder_for(settings.service.state_dir, settings.source)
    doc = state.read(folder)
    if doc and doc.get("config") not in (None, str(settings.source)):
        doc = None  # another config's daemon (a shared [service] state_dir): not this one
    running = bool(doc) and doc.get("state") in ("starting", "running") and state.alive(doc["pid"])
    if as_json:
        typer.echo(json.dumps({**(doc or {}), "running": running}))
    elif not doc:
        typer.echo(f"bbsd is not running (no status file of {settings.source} in {folder})")
    else:
        typer.echo(console.status_text(doc, running))
    raise typer.Exit(0 if running else 3)


@app.command()
def report(
    config: Path = CONFIG,
    since: str = typer.Option(None, "--since", help="Only photos labelled since: 2h, 30m, 1d or an ISO date."),
    out: Path = typer.Option(Path("bbsd-report.html"), "--out", "-o", help="The HTML file to write."),
) -> None:
    """Write an HTML report (latency, memory, throughput, with plots) from the sidecars, and print a summary."""
    from datetime import UTC, datetime

    from bbsd import config as config_mod
    from bbsd.study import performance

    settings = config_mod.load(config)
    since_at = performance.parse_since(since, datetime.now(UTC))
    records = performance.collect(settings.watch.folders, settings.watch.extensions, since_at)
    summary = performance.write(out, records)
    typer.echo(performance.text_summary(summary))
    typer.echo(f"report: {out.resolve()}")


service_app = typer.Typer(help="Install or remove the systemd unit.", no_args_is_help=True)
app.add_typer(service_app, name="service")


@service_app.command("install")
def service_install(
    config: Path = CONFIG,
    user: str = typer.Option("bbsd", "--user", help="The system user bbsd runs as (shares files with editors)."),
    unit_dir: Path = typer.Option(Path("/etc/systemd/system"), "--unit-dir", help="Where units go."),
) -> None:
    """Write bbsd.service (and a GPU drop-in when configured) for this config; print the systemctl commands."""
    from bbsd import config as config_mod
    from bbsd.service import unit

    settings = config_mod.load(config)
    item = unit.plan(settings, user)
    for path in unit.install(unit_dir, item):
        typer.echo(f"wrote {path}")
    typer.echo("next, as root:")
    for command in item.commands:
        typer.echo(f"  {command}")


@service_app.command("uninstall")
def service_uninstall(
    unit_dir: Path = typer.Option(Path("/etc/systemd/system"), "--unit-dir", help="Where units go."),
) -> None:
    """Remove the unit and its drop-in; print the systemctl commands that stop it first."""
    from bbsd.service import unit

    typer.echo("first, as root:\n  sudo systemctl disable --now bbsd.service")
    for path in unit.uninstall(unit_dir):
        typer.echo(f"removed {path}")
    typer.echo("then:\n  sudo systemctl daemon-reload")


from bbsd.cli_models import models_app  # noqa: E402  (registered after the commands above)
from bbsd.cli_study import dataset_app, eval_command, truth_app  # noqa: E402

app.add_typer(models_app, name="models")
app.add_typer(truth_app, name="truth")
app.add_typer(dataset_app, name="dataset")
app.command("eval")(eval_command)


@app.command()
def demo(
    folder: Path = typer.Option(Path("demo"), "--dir", help="Where the demo writes its model, photos and inbox."),
) -> None:
    """Run the daemon on toy-show photos with bbsd's toy model (trained on synthetic puppets) and count how
    many it labelled right."""
    from bbsd import demo as demo_mod

    demo_mod.main(folder)


@app.command("_worker", hidden=True)
def _worker(config: Path = CONFIG, parent: int = typer.Option(..., "--parent"),
            warm: bool = typer.Option(False, "--warm-up"),
            profile: Path = typer.Option(None, "--profile")) -> None:
    """Internal: the engine worker process started by `bbsd run` and `bbsd eval` (not for people)."""
    from bbsd import config as config_mod
    from bbsd.engine import worker

    def load(references: bool):  # only for a worker started without settings handed over (by hand)
        if profile:
            return config_mod.load_profile(config, profile, references=references)
        return config_mod.load(config, references=references)

    raise typer.Exit(worker.main(load, parent, warm))


@app.command("_decoder", hidden=True)
def _decoder(config: Path = CONFIG, parent: int = typer.Option(..., "--parent")) -> None:
    """Internal: the photo decoder process (not for people)."""
    from bbsd import config as config_mod
    from bbsd.photo import worker as decode_worker

    raise typer.Exit(decode_worker.main(lambda: config_mod.load(config), parent))


def _print_version(verbose: bool) -> None:
    typer.echo(f"bbsd {__version__}")
    if verbose:
        from bbsd import logs
        from bbsd.engine.llama import compute

        logs.configure("warning", "auto")  # keep llama.cpp's chatter out of the answer
        python = f"Python {sys.version.split()[0]}"
        typer.echo(f"runtime: {'PyInstaller bundle, ' + python if getattr(sys, 'frozen', False) else python}")
        for key, value in compute.describe().items():
            typer.echo(f"{key}: {', '.join(value) if isinstance(value, list) else value}")


def main(argv: list[str] | None = None) -> None:
    from bbsd import plugins
    from bbsd.errors import BbsdError
    from bbsd.text import printable

    args = sys.argv[1:] if argv is None else argv
    if "--version" in args[:2]:  # before typer: `--version --verbose` in either order
        _print_version("--verbose" in args or "-v" in args)
        sys.exit(0)
    try:
        plugins.load()  # before any command: the daemon's children start here too, and load the same
        code = app(args=args, prog_name="bbsd", standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.TyperException as e:  # usage errors: unknown option, missing argument
        e.show() if hasattr(e, "show") else print(f"bbsd: error: {e.format_message()}", file=sys.stderr)
        code = 2
    except typer.Abort:
        code = 130
    except BbsdError as e:  # escaped: the message may quote a file name or a server's reply
        print(f"bbsd: error: {printable(e.one_line())}", file=sys.stderr)
        code = int(e.exit_code)
    except Exception as e:
        if os.environ.get("BBSD_DEBUG") or "PYTEST_CURRENT_TEST" in os.environ:
            raise
        print(f"bbsd: internal error: {type(e).__name__}: {printable(str(e))} — run with BBSD_DEBUG=1 for the "
              "traceback and report it", file=sys.stderr)
        code = 70
    sys.exit(code if isinstance(code, int) else 0)

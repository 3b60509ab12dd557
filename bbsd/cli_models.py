"""`bbsd models list | inspect | pull | convert | fit`: choosing a model, getting it, and whether it fits."""

from __future__ import annotations

from pathlib import Path

import typer

models_app = typer.Typer(help="The model registry: list, inspect, pull, convert and size up GGUF pairs.",
                         no_args_is_help=True)
@models_app.callback()
def _logging() -> None:
    from bbsd import logs

    logs.configure("info", "auto")  # download.* events on stderr; results on stdout


DIR = typer.Option(Path("gguf_models"), "--dir", help="Folder with the GGUF files (and a models.toml whose rows add "
                   "to the registry shipped with bbsd, or replace its rows by name).")


def _mb(v: float) -> str:
    return f"{v / 1024:.1f} GB" if v >= 1024 else f"{v:.0f} MB"


@models_app.command("list")
def list_models(folder: Path = DIR) -> None:
    """Every registry row: its route into bbsd, whether that route was proven here, and which files are here."""
    from bbsd.models import registry as models

    typer.echo(f"{'name':24} {'family':13} {'params':>7}  {'status':12} {'route':14} {'proven':9} here")
    for e in models.load(folder):
        text, mmproj = models.local_files(e, folder) if e.status in ("runnable", "convert") else (None, None)
        here = ", ".join(f"{p.name} ({_mb(p.stat().st_size / 2**20)})" for p in (text, mmproj) if p) or "-"
        typer.echo(f"{e.name:24} {e.family:13} {e.params_b:>6.2f}B  {e.status:12} {models.route(e):14} {e.proven:9} "
                   f"{here}")
    typer.echo("\nproven: synthetic = this route ran end to end here on tiny random weights of the model's exact "
               "structure (tests); paper = read from the model card and llama.cpp's code, not run here")
    extra = [p for p in sorted(folder.glob("*.gguf"))]
    if extra:
        typer.echo(f"\nGGUF files in {folder}: " + ", ".join(p.name for p in extra))
    typer.echo("\n" + _sources(folder) + "\n" + LEGEND)


def _sources(folder: Path) -> str:
    """Where the rows came from: the shipped registry, and the models folder's own where it has one."""
    from bbsd.models import registry as models

    line = f"registry: {len(models.load_registry(models.shipped()))} rows shipped with bbsd"
    local = models.registry_path(folder)
    if local.is_file():
        line += f", {len(models.load_registry(local))} from {local} (added, or replacing a shipped row by name)"
    return line


LEGEND = """status: runnable      llama.cpp runs it: `bbsd models pull NAME`, then [model] name = "NAME"
        convert       no ready GGUF: download the checkpoint, then `bbsd models convert FOLDER`
        not-runnable  llama.cpp has no support for its vision encoder: serve it with vLLM or LMDeploy and
                      use the openai backend (docs/producer/remote.md)
        text-only     cannot see photos; its vision sibling is listed
route:  how the model reaches bbsd (ready GGUF, convert, remote backend, none)
here:   the model's GGUF files found in the models folder, with their sizes ("-": none yet)
`bbsd models fit` estimates memory; each row's notes are in the registry (bbsd/models/models.toml)."""


@models_app.command("inspect")
def inspect(files: list[Path] = typer.Argument(..., help="A text GGUF, optionally followed by its mmproj.")) -> None:
    """GGUF metadata (architecture, projector, context, quantisation, chat template) and the pairing verdict."""
    from bbsd.models import registry as models

    infos = [models.inspect(f) for f in files]
    for i in infos:
        typer.echo(f"{i.path.name}: {i.kind}, architecture {i.architecture}, quantisation {i.quant}, "
                   f"{_mb(i.size_bytes / 2**20)}")
        if i.kind == "text":
            typer.echo(f"  context {i.context_length}, width {i.embedding_length}, {i.n_layer} layers, "
                       f"chat template {'yes' if i.chat_template else 'NO (bbsd falls back to ChatML)'}")
        else:
            typer.echo(f"  projector {i.projector}, output width {i.projection_dim}")
    if len(infos) == 2:
        ok, why = models.pairing(*infos)
        typer.echo(f"pair: {why}")
        raise typer.Exit(0 if ok else 1)


@models_app.command("pull")
def pull(name: str = typer.Argument(..., help="A registry name, e.g. SmolVLM-500M."), folder: Path = DIR) -> None:
    """Download a pair (resumable, sha256-verified, placed atomically). Honours $HF_ENDPOINT."""
    from bbsd.models import download
    from bbsd.models import registry as models

    entry = models.find(models.load(folder), name)
    for path in download.pull(entry, folder):
        typer.echo(f"ready: {path} ({_mb(path.stat().st_size / 2**20)})")
    typer.echo(f'use it: [model] name = "{entry.name}"')


@models_app.command("convert")
def convert(checkpoint: Path = typer.Argument(..., help="A downloaded InternVL checkpoint folder (config.json, "
                                                         "*.safetensors, tokenizer files)."),
            out: Path = typer.Option(Path("gguf_models"), "--out", help="Folder for the pair (and the models.toml "
                                     "row of a checkpoint the registry does not know)."),
            quant: str = typer.Option("Q4_K_M", "--quant", help="Text quantisation: Q4_K_M, Q8_0 or F16.")) -> None:
    """InternVL checkpoint -> text GGUF + mmproj GGUF (llama.cpp's converter, extended), verified and registered."""
    import sys

    from bbsd.errors import ConvertError
    from bbsd.models import convert as conversion

    if quant.upper() not in conversion.QUANTS:
        raise ConvertError(f"--quant {quant} is not offered", f"use one of {', '.join(conversion.QUANTS)}")
    done = conversion.convert(checkpoint, out, quant.upper(), progress=sys.stderr.isatty())
    for p in (done.text, done.mmproj):
        typer.echo(f"ready: {p} ({_mb(p.stat().st_size / 2**20)})")
    typer.echo(f"pair verified (bbsd models inspect); {done.registered}; took {done.seconds:.0f} s")


@models_app.command("fit")
def fit(name: str = typer.Argument(None, help="One registry name; default: every row."), folder: Path = DIR,
        context: int = typer.Option(4096, "--context", help="Context size to size the KV cache for.")) -> None:
    """Estimated RAM/VRAM per model against this machine: green fits, yellow is tight, red does not."""
    import psutil

    from bbsd import metrics
    from bbsd.models import registry as models

    entries = models.load(folder)
    if name:
        entries = [models.find(entries, name)]
    ram = psutil.virtual_memory().available / 2**20
    vram = metrics.total_vram_mb()
    typer.echo(f"this machine: {_mb(ram)} RAM available, " + (f"{_mb(vram)} VRAM" if vram else "no GPU"))
    vram_head = f" {'VRAM':7}" if vram else ""  # without a GPU the column would say `unknown` on every row
    typer.echo(f"{'name':24} {'estimate':>9}  {'RAM':7}{vram_head} (weights + mmproj + KV + compute + runtime)")
    for e in entries:
        text, mmproj = models.local_files(e, folder) if e.status == "runnable" else (None, None)
        est = (models.estimate_files(models.inspect(text), models.inspect(mmproj) if mmproj else None, context)
               if text else models.estimate_entry(e, context))
        vram_cell = f" {models.verdict(est.total_mb - models.RUNTIME_MB, vram):7}" if vram else ""
        typer.echo(f"{e.name:24} {_mb(est.total_mb):>9}  {models.verdict(est.total_mb, ram):7}{vram_cell} "
                   f"({_mb(est.weights_mb)} + {_mb(est.mmproj_mb)} + {_mb(est.kv_mb)} + {_mb(est.compute_mb)} "
                   f"+ {_mb(est.runtime_mb)}){' from the local files' if text else ''}"
                   f"{'' if e.status == 'runnable' else '  [' + e.status + ']'}")

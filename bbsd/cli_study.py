"""The model study's commands: `bbsd truth export`, `bbsd eval`, `bbsd dataset export` (work in `bbsd.study`)."""

from __future__ import annotations

from pathlib import Path

import typer

from bbsd import console

truth_app = typer.Typer(help="Ground truth for `bbsd eval`: build a manifest from reviewed sidecars.",
                        no_args_is_help=True)

dataset_app = typer.Typer(help="Fine-tuning data: reviewed photos and their labels in a trainer's format.",
                          no_args_is_help=True)

CONFIG = typer.Option(Path("config.toml"), "--config", "-c", envvar="BBSD_CONFIG", show_default=True,
                      help="Configuration file (TOML). Also $BBSD_CONFIG.")


@truth_app.command("export")
def truth_export(
    config: Path = CONFIG,
    out: Path = typer.Option(Path("truth.jsonl"), "--out", "-o", help="The manifest (JSONL) to write."),
) -> None:
    """Write a truth manifest of every photo whose labels a person confirmed or corrected."""
    from bbsd import config as config_mod
    from bbsd.study import truth

    settings = config_mod.load(config)
    count = truth.export(settings, out)
    typer.echo(f"truth: {count} reviewed photos in {out.resolve()}")


def eval_command(
    config: Path = CONFIG,
    truth_file: Path = typer.Option(..., "--truth", help="The truth manifest (JSONL, see docs/producer/eval.md)."),
    profile: list[Path] = typer.Option(None, "--profile", help="A TOML overlay of [model]/[engine]/[prompt]/backend "
                                       "keys; repeat to compare. Default: the config as it is."),
    out: Path = typer.Option(Path("bbsd-eval"), "--out", "-o", help="Folder for results and reports; "
                             "a run into the same folder resumes."),
) -> None:
    """Label a truth set with each profile and report accuracy, speed and memory (table, JSON, HTML)."""
    from bbsd import config as config_mod
    from bbsd import logs
    from bbsd.study import performance, runs, summary, truth
    from bbsd.study import report as eval_report

    settings = config_mod.load(config)
    logs.configure(settings.log.level, settings.log.format)
    chosen = runs.profiles(config, list(profile or []))
    truths = truth.read(truth_file, settings)
    summaries = []
    with console.Progress(len(truths) * len(chosen)) as advance:
        for p in chosen:
            results = runs.Results(out, p)
            runs.run(p, truths, results, advance)
            summaries.append(summary.summarise(p.name, truths, results.photos(), results.loads(),
                                               settings.questions, p.settings.xmp.review_below))
    json_path, html_path = eval_report.write(out, summaries, performance.machine())
    typer.echo(eval_report.table(summaries))
    typer.echo(f"eval: {json_path.resolve()} and {html_path.resolve()}")


@dataset_app.command("export")
def dataset_export(
    config: Path = CONFIG,
    truth_file: Path = typer.Option(None, "--truth", help="A truth manifest (JSONL, docs/producer/eval.md). "
                                    "Default: the reviewed sidecars, as `bbsd truth export` finds them."),
    out: Path = typer.Option(..., "--out", "-o", help="A new or empty folder for images, samples and the "
                             "trainer's registration file."),
    fmt: str = typer.Option("internvl", "--format", help="internvl or llama-factory (docs/producer/dataset.md)."),
) -> None:
    """Write reviewed photos and their labels as an instruction-tuning set with bbsd's own prompt."""
    from bbsd import config as config_mod
    from bbsd import logs
    from bbsd.study import dataset, truth

    if fmt not in dataset.WRITERS:
        raise dataset.DatasetError(f"unknown --format {fmt!r}", f"use one of {', '.join(dataset.WRITERS)}")
    settings = config_mod.load(config)
    logs.configure(settings.log.level, settings.log.format)
    truths = truth.read(truth_file, settings, require_files=False) if truth_file else dataset.from_sidecars(settings)
    done = dataset.export(settings, truths, out, fmt)
    typer.echo(f"dataset: {done.written} samples ({fmt}) in {out.resolve()}; "
               f"{done.missing} photos missing, {done.incomplete} skipped as incomplete")

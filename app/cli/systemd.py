"""`postwarden systemd`: write a systemd service per Procfile process and postwarden.target."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.cli.common import load, main
from app.config import config_path
from app.systemdunits import WORKER_CONCURRENCY, UnitError, UnitOptions, write_units


@main.command("systemd")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to write the units into (e.g. /etc/systemd/system).",
)
@click.option("--user", default="postwarden", show_default=True, help="User the processes run as.")
@click.option("--group", help="Their group (default: the same name as --user).")
@click.option(
    "--bin-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(sys.executable).parent,
    show_default="this venv's bin",
    help="Folder of the postwarden, celery and python executables.",
)
@click.option(
    "--worker-concurrency",
    type=click.IntRange(min=1),
    default=WORKER_CONCURRENCY,
    show_default=True,
    help="Processes of the Celery worker (tasks run at once on this machine).",
)
@click.option(
    "--process",
    "names",
    multiple=True,
    help="Only this Procfile process (repeat for several; default: all of them).",
)
@click.pass_context
def systemd_command(
    ctx: click.Context,
    output: Path,
    user: str,
    group: str | None,
    bin_dir: Path,
    worker_concurrency: int,
    names: tuple[str, ...],
) -> None:
    """Write postwarden-PROCESS.service for the Procfile's processes and postwarden.target, for the
    config given with --config (read now: its data_dir, database, broker and web port shape the units)."""
    config = load(ctx)
    options = UnitOptions(
        bin_dir=bin_dir.absolute(),
        config_file=config_path(ctx.find_root().obj).resolve(),
        user=user,
        group=group or user,
        worker_concurrency=worker_concurrency,
    )
    try:
        written = write_units(config, options, list(names) or None, output)
    except UnitError as e:
        click.echo(f"postwarden: {e}", err=True)
        sys.exit(2)
    for path in written:
        click.echo(str(path))

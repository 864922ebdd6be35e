"""The ``mta`` command: instance setup, inspection, injection and the daemons.

Every subcommand finds its instance from ``--root DIR``, else ``$MTA_ROOT``, else
``./var``. Errors are printed on stderr with a non-zero exit: ``mta inject`` exits
100 for a permanent problem (bad input) and 111 for a temporary one (qmail's
convention); a malformed control file makes ``mta start``, ``mta send`` and
``mta showctl`` exit 111 (temporary: fix it and start again), naming the file and the
line, before anything runs; other errors exit 1 (click's), bad usage 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli import TempFailure

from cli.mta_queue_cmds import QUEUE_COMMANDS
from mta.instance import InstanceError, find_root, init_instance


@click.group()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="instance folder (default: $MTA_ROOT, else ./var)")
@click.pass_context
def main(ctx: click.Context, root: Path | None) -> None:
    """qmail-compatible MTA core built for mailing-list fan-out."""
    ctx.obj = find_root(root)


def _control(root: Path):
    from mta.control import ControlError, load_control

    try:
        return load_control(root)
    except ControlError as e:
        raise TempFailure(str(e)) from e


@main.command()
@click.option("--me", default=None, help="this host's fully qualified name (control/me)")
@click.option("--no-privsep", is_flag=True,
              help="as root: do not create per-role users (also: MTA_PRIVSEP=no)")
@click.option("--spare-files", type=click.IntRange(min=0), default=None, metavar="N",
              help="empty files a new queue starts with in queue/free/, so its first"
                   " injections reuse them instead of creating files (default and"
                   " most: 8192, the most free/ keeps; 0: none)")
@click.pass_obj
def init(root: Path, me: str | None, no_privsep: bool, spare_files: int | None) -> None:
    """Create an instance (control/, queue/, alias/, lists/, log/); idempotent.

    As root it also creates one user a role (control/users) and sets ownership.
    """
    from mta.privsep import PrivsepError, privsep_wanted, setup_users

    try:
        created = init_instance(root, me, spare_files)
        if privsep_wanted() and not no_privsep:
            users = setup_users(root)
            created.append("users " + ",".join(f"{r}={u}" for r, u in users.items()))
    except (InstanceError, PrivsepError) as e:
        raise click.ClickException(str(e)) from e
    if created:
        click.echo(f"{root}: created {' '.join(created)}")
    else:
        click.echo(f"{root}: already an instance; nothing to do")


@main.command()
@click.pass_obj
def showctl(root: Path) -> None:
    """Print every control setting, its value, and whether it is the default."""
    ctl = _control(root)
    click.echo(f"instance: {root.resolve()}")
    for setting, value, is_default in ctl.settings():
        shown = _show_value(value)
        mark = "(default)" if is_default else ""
        unit = f" {setting.unit}" if setting.unit and shown not in ("", "(none)") else ""
        click.echo(f"{setting.name}: {shown}{unit} {mark}".rstrip())
        click.echo(f"    {setting.doc}")


def _show_value(value) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, (frozenset, set)):
        return ", ".join(sorted(value)) or "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}:{v}" for k, v in sorted(value.items())) or "(none)"
    if isinstance(value, tuple):
        return "; ".join(_show_item(v) for v in value) or "(none)"
    return str(value)


def _show_item(v) -> str:
    if isinstance(v, tuple):
        return ":".join(str(x) for x in v)
    if hasattr(v, "domain"):
        return f"{v.domain}:{v.host}:{v.port}"
    return str(v)


def _hostport(ctx, param, value):
    if value is None or value == "":
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@main.command()
@click.option("--smtp", default="127.0.0.1:2525", show_default=True, callback=_hostport,
              help="SMTP listen address ('' to run none)")
@click.option("--qmtp", default=None, callback=_hostport, help="QMTP listen address")
@click.option("--qmqp", default=None, callback=_hostport, help="QMQP listen address")
@click.option("--progress", default=None, callback=_hostport,
              help="read-only progress endpoint for list hosts (see README)")
@click.option("--workers", type=int, default=None, help="remote worker processes")
@click.option("--smtp-procs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="SMTP listener processes sharing the port (SO_REUSEPORT; caps split)")
@click.pass_obj
def start(root: Path, smtp, qmtp, qmqp, progress, workers, smtp_procs) -> None:
    """Start the listeners, the scheduler and the delivery workers; supervise them."""
    import uvloop

    from mta.access import AccessError, load_access
    from mta.start import Supervisor

    _control(root)
    try:
        load_access(root)
    except AccessError as e:
        raise TempFailure(f"refusing to start: {e}") from e
    click.echo(f"mta: instance {root}; smtp {smtp}; qmtp {qmtp}; qmqp {qmqp}", err=True)
    sys.exit(uvloop.run(Supervisor(root, smtp, qmtp, qmqp, workers, progress,
                                   smtp_procs=smtp_procs).run()))


for _command in QUEUE_COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    sys.exit(main())

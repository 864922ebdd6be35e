"""Command-line entry points: mta, ezlist, and the qmail-queue / sendmail shims."""

import click


class TempFailure(click.ClickException):
    """An error that exits 111, qmail's temporary failure (e.g. a malformed control file:
    fix it and start again; a supervisor retries)."""

    exit_code = 111

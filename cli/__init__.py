"""Command-line entry points: mta, ezlist, and the qmail-queue / sendmail shims."""

"""mta: a qmail-compatible mail transfer agent core built for one-to-many fan-out."""

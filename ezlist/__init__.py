"""ezlist: an ezmlm-style mailing list manager posting through the mta's queue."""

"""Remote delivery (qmail-rspawn + qmail-remote).

    routes   Route, parse_routes, route_for, resolve_destination (smtproutes, then DNS)
    body     prepare_body: CRLF, dot-stuffed, final dot; once per message
    hosts    HostState: per receiving host queue and adaptive concurrency
    worker   the remote worker process (``python -m mta.remote.worker``)
"""

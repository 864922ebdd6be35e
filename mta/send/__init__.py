"""The scheduler (qmail-send's job). See ``scheduler`` for the theory of operation.

    scheduler  Scheduler: due recipients -> workers -> results -> retries/bounces
    store      the scheduler's batched statements on queue.db
    schedule   next_retry, expired: qmail's retry schedule and queue lifetime
    router     Router: smtproutes, else DNS (cached)
    bouncer    Bouncer: bounces, double bounces, triple-bounce discards
    supervise  Supervision: worker processes, signals, the injection trigger
    journal    InflightJournal: what was in flight at a crash ("possible duplicate")
    spawn      WorkerProcess and the JSON-lines protocol to the workers
    log        SendLog: qmail-send's log lines
"""

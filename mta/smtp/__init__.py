"""Sans-I/O SMTP: bytes in, events out; no sockets, clocks or event loops here.

Public modules and names:
    server   SmtpServer (the qmail-smtpd state machine), its events SendBytes,
             CloseConnection, StartTls, MessageReady
    policy   SmtpPolicy (limits, relay and recipient checks for a listener)
    client   SMTPClient (pipelining client core), LocalProtocolError
    client_events  SessionReady, StartTLS, DataSent, TransactionDone, SessionFailed,
             Closed, Extensions
    reply_parse    Reply, ReplyParser
    replies  named reply constants
The asyncio transports are in ``mta.smtpd`` and ``mta.net.smtp_client``.
"""

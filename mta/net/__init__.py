"""Thin asyncio (uvloop) transports around the sans-I/O protocol cores.

    smtp_client   open_smtp_connection, SMTPConnection, ConnectionFailed
    qmtp_server   open_qmtp_server, serve_qmtp
    qmqp_server   open_qmqp_server, serve_qmqp
    qm_client     qmtp_send, qmqp_send
The SMTP server transport is ``mta.smtpd``.
"""

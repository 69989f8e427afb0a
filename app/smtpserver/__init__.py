"""SMTP listeners (aiosmtpd): inbound MX mail and authenticated submission.

server.py starts the listeners; protocol.py is the shared SMTP layer; inbound.py and submission.py
are the handlers; delivery.py turns an authentication outcome into mailbox copies and a reply.
"""

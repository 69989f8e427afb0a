"""SMTP listeners (aiosmtpd): inbound MX mail and authenticated submission.

server.py starts the listeners; protocol.py is the shared SMTP layer; inbound.py and submission.py
are the handlers (the decision about an inbound message is app/verdict/).
"""

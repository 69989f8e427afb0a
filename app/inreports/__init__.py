"""Incoming reports: the DMARC aggregate (RFC 9990, RFC 7489) and SMTP TLS (RFC 8460) reports others send
us, found in a message or a file (`unpack.py`), decompressed within fixed bounds and parsed into frozen
dataclasses (`dmarc.py`, `tls.py`); `read.py` joins the steps; a refusal is a `ReportError` carrying its
R6.3 reason (`errors.py`). Parsing only: nothing is stored here.
"""

"""DMARC aggregate reports (RFC 9990) that we send about mail we received (SPEC §2).

Modules: `evaluations` (what the SMTP server hands over, stored per R2.1/R2.2), `interval` (report
intervals), `rua` (where reports go: mailto URIs, external destination verification), `xml` (the
report document), `mail` (the report message, DKIM-signed) and `job` (the hourly run:
`send_dmarc_reports`). The suppression list shared with TLS reports is app/reportsuppress.py.
"""

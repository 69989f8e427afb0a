"""SMTP TLS reports (RFC 8460) that we send: daily, per policy domain, by mail or HTTPS POST.

Modules: `record` (the `_smtp._tls` TXT record), `report` (the JSON report), `message` (the report
mail; who sends it is app/reportsender.py), `https` (POST transport), `results` (the TLS result
tables: delivery records into them, the job reads and marks them), `job` (the daily run:
`send_tls_reports`) and `posts` (reports waiting for their POST: `post_due_reports`). Nothing is
imported here, so importing one module stays light.
"""

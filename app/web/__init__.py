"""The web process: admin pages, /health and /metrics (ASGI, served by uvicorn)."""

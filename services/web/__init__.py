"""The HTTP side: the ops dashboard page (live over server-sent events), ``/metrics`` in the
Prometheus text format, and a read-only JSON API over the registry, in one FastAPI app."""

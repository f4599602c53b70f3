"""The HTTP edge: the server's limits (server.py), request bodies (body.py), the API key
(auth.py), metrics and logs (observability.py)."""

# Every 503 says when to retry: in a second (not ready, overloaded, restarting).
RETRY_AFTER = {"Retry-After": "1"}

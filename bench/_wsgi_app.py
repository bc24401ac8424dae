"""The WSGI app of ``bench/gunicorn.py``: the smallest answer, so the server's own work dominates."""

BODY = b"ok"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]

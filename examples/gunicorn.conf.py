"""gunicorn settings for examples/wsgi_app.py on a PROXY port, behind examples/haproxy-gunicorn.cfg.

    gunicorn -c examples/gunicorn.conf.py --chdir examples wsgi_app:app
    curl http://127.0.0.1:8080/            # through HAProxy: REMOTE_ADDR is curl's
    curl -k https://127.0.0.1:8443/        # wsgi.url_scheme=https (HAProxy's SSL TLV)
"""

bind = "127.0.0.1:8000"
# gunicorn's -k gevent, with the PROXY header read before the HTTP parser sees a byte.
worker_class = "gevent_proxyproto.gunicorn.GeventWorker"
workers = 2
# Who may send PROXY headers: the load balancers. gunicorn's own setting: addresses, CIDRs, or "*".
proxy_allow_ips = "127.0.0.1,::1"
# gevent_proxyproto's own settings are environment variables of the workers (see docs/gunicorn.rst).
raw_env = [
    "GEVENT_PROXYPROTO_HEADER_TIMEOUT=5",  # seconds for the header (and TLS after it)
    "GEVENT_PROXYPROTO_MAX_HEADER_SIZE=16384",  # bytes
    "GEVENT_PROXYPROTO_MIXED=0",  # 1: sources outside proxy_allow_ips connect without a header
]
accesslog = "-"  # %(h)s is the client, from the header
# Not proxy_protocol: that is gunicorn's own parser, and the worker refuses it.

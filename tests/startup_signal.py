"""A handler module that signals its own process while serve imports it: a stop during start-up.

The signal is named by the environment (GPP_TEST_SIGNAL), so one module covers SIGINT and SIGTERM.
"""

import os
import signal

os.kill(os.getpid(), getattr(signal, os.environ["GPP_TEST_SIGNAL"]))


def handle(sock, address):
    sock.sendall(b"never reached\n")

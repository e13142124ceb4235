"""Loopback helpers the Python benches share: a free port, and waiting for one."""
import socket
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port):
    """Wait (10 s at most) until something accepts on 127.0.0.1:`port`."""
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def gantry_proxy_config(port, admin_port, origin_port, limits=""):
    """A Gantry config: one listener on `port`, everything to the origin."""
    return f"""{limits}
[admin]
address = "127.0.0.1:{admin_port}"
[[listeners]]
name = "http"
address = "127.0.0.1:{port}"
[[pools]]
name = "origin"
endpoints = ["127.0.0.1:{origin_port}"]
[[routes]]
name = "all"
pool = "origin"
"""

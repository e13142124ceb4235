#!/usr/bin/env python3
"""Slowloris against Gantry: N connections trickle request heads one byte at a
time from 127.0.0.1 while a well-behaved client on 127.0.0.2 sends requests;
prints the well-behaved client's success rate and p50/p99, unloaded and under
attack, as one JSON line. The attacker, the origin and the measuring client
are separate processes.

    python3 bench/slowloris.py target/release/gantry [--connections 1000] [--seconds 20] [--nginx]

`--nginx` runs the same attack on nginx (Debian's, one worker,
`client_header_timeout 2s`) in front of the same origin, as the anchor: what
the machine itself adds to the well-behaved client's tail under the attack.

The gateway runs with `head_timeout_ms` 2 s and a per-client connection cap
above N, so the head deadline (not the cap) is what holds the attack off.
"""
import argparse, asyncio, json, multiprocessing, os, socket, statistics, subprocess, tempfile, time

from loopback import free_port, gantry_proxy_config, wait_port  # bench/, the script's own folder
import http.server


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # One write: headers and body in separate segments would meet Nagle and
        # delayed ACKs (40 ms) and hide the gateway's own latency.
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    def log_message(self, *a):
        pass


async def slow_client(port, stop):
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 10000
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for b in head:
                if stop.is_set():
                    break
                writer.write(bytes([b])); await writer.drain()
                await asyncio.sleep(0.1)
        except (ConnectionError, OSError):
            await asyncio.sleep(0.05)
        finally:
            try:
                writer.close()
            except Exception:
                pass


async def good_client(port, seconds):
    took, failed = [], 0
    end = time.time() + seconds
    while time.time() < end:
        t = time.time()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0)), 5)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            if data.startswith(b"HTTP/1.1 200"):
                took.append(time.time() - t)
            else:
                failed += 1
        except Exception:
            failed += 1
        await asyncio.sleep(0.01)
    return took, failed


def summary(took, failed):
    took = sorted(took)
    n = len(took) + failed
    return {"requests": n, "success": round(len(took) / max(n, 1), 5),
            "p50_ms": round(1000 * statistics.median(took), 2) if took else None,
            "p99_ms": round(1000 * took[int(len(took) * 0.99) - 1], 2) if took else None}


def attack(port, connections, seconds):
    """The slow clients, in a process of their own: sharing the measuring
    client's event loop (or the origin's interpreter) would measure Python's
    scheduling, not the gateway."""
    async def go():
        stop = asyncio.Event()
        tasks = [asyncio.create_task(slow_client(port, stop)) for _ in range(connections)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(go())


def serve_origin(port):
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Origin).serve_forever()


def run(port, connections, seconds):
    base = summary(*asyncio.run(good_client(port, seconds)))
    attacker = multiprocessing.Process(target=attack, args=(port, connections, seconds + 4))
    attacker.start()
    time.sleep(2)
    loaded = summary(*asyncio.run(good_client(port, seconds)))
    attacker.join()
    return base, loaded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gantry"); ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--nginx", action="store_true", help="measure nginx too, as the anchor")
    args = ap.parse_args()
    origin_port, port, admin = free_port(), free_port(), free_port()
    origin = multiprocessing.Process(target=serve_origin, args=(origin_port,), daemon=True)
    origin.start()
    tmp = tempfile.mkdtemp()
    conf = os.path.join(tmp, "gantry.toml")
    with open(conf, "w") as f:
        f.write(gantry_proxy_config(port, admin, origin_port, f"""[server]
threads = 1
[limits]
head_timeout_ms = 2000
max_connections_per_client = {args.connections * 2}"""))
    gw = subprocess.Popen([args.gantry, "gateway", "--config", conf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [gw]
    try:
        wait_port(port)
        base, loaded = run(port, args.connections, args.seconds)
        report = {"slow_connections": args.connections, "gantry": {"unloaded": base, "under_attack": loaded}}
        if args.nginx:
            nginx_port = free_port()
            with open(os.path.join(tmp, "nginx.conf"), "w") as f:
                f.write(f"""daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
worker_processes 1;
events {{ worker_connections {args.connections * 2 + 100}; }}
http {{ access_log off; client_body_temp_path {tmp}; client_header_timeout 2s;
  server {{ listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://127.0.0.1:{origin_port}; proxy_http_version 1.1; }} }} }}
""")
            procs.append(subprocess.Popen(["nginx", "-c", f"{tmp}/nginx.conf"], stderr=subprocess.DEVNULL))
            wait_port(nginx_port)
            base, loaded = run(nginx_port, args.connections, args.seconds)
            report["nginx"] = {"unloaded": base, "under_attack": loaded}
        print(json.dumps(report))
    finally:
        for p in procs:
            p.terminate()
        origin.terminate()


if __name__ == "__main__":
    main()

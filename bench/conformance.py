#!/usr/bin/env python3
"""Gantry next to nginx (Debian's 1.22, default settings, as the same reverse
proxy) on a corpus of ambiguous and malformed HTTP/1.1 requests
(proxy/tests/conformance/requests.json): each request is sent raw to both, and
the table says what each answered and whether the origin behind it was reached.

    python3 bench/conformance.py target/debug/gantry [--write-nginx]

`--write-nginx` records nginx's status for each request in the corpus file, so
the in-process test (proxy/tests/all/edge.rs) can hold Gantry to it: whatever
nginx refuses, Gantry refuses. Prints a Markdown table (docs/CONFORMANCE.md).
"""
import http.server, json, os, socket, subprocess, sys, tempfile, threading, time

from loopback import free_port, gantry_proxy_config, wait_port  # bench/, the script's own folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "proxy/tests/conformance/requests.json")


class Origin(http.server.BaseHTTPRequestHandler):
    hits = []
    protocol_version = "HTTP/1.1"

    def _answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        Origin.hits.append((self.command, self.path, body))
        out = b"origin\n"
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *a):
        pass


def send(port, raw):
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(3)
    s.sendall(raw.encode("latin-1"))
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d: break
            out += d
    except socket.timeout:
        pass
    s.close()
    first = out.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def main():
    gantry = sys.argv[1]
    origin_port, nginx_port, gantry_port, admin_port = free_port(), free_port(), free_port(), free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", origin_port), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(f"""daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{}}
http {{ access_log off; client_body_temp_path {tmp};
  server {{ listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://127.0.0.1:{origin_port}; proxy_http_version 1.1; }} }} }}
""")
    with open(os.path.join(tmp, "gantry.toml"), "w") as f:
        f.write(gantry_proxy_config(gantry_port, admin_port, origin_port))
    procs = [subprocess.Popen(["nginx", "-c", f"{tmp}/nginx.conf"], stderr=subprocess.DEVNULL),
             subprocess.Popen([gantry, "gateway", "--config", f"{tmp}/gantry.toml"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_port(nginx_port); wait_port(gantry_port)
        corpus = json.load(open(CORPUS))
        rows = []
        for case in corpus:
            Origin.hits.clear(); n = send(nginx_port, case["request"]); time.sleep(0.05)
            n_hits = len(Origin.hits)
            Origin.hits.clear(); g = send(gantry_port, case["request"]); time.sleep(0.05)
            g_hits = len(Origin.hits)
            rows.append((case["name"], n, n_hits, g, g_hits))
            case["nginx"] = n
        print("| request | nginx 1.22 | origin hits | Gantry | origin hits |")
        print("|---|---|---|---|---|")
        for name, n, nh, g, gh in rows:
            print(f"| {name} | {n or 'no answer'} | {nh} | {g or 'no answer'} | {gh} |")
        bad = [r[0] for r in rows if (r[1] or 200) >= 400 and (r[3] is None or r[3] < 400)]
        print(f"\nnginx refuses, Gantry accepts: {', '.join(bad) or 'none'}")
        if "--write-nginx" in sys.argv:
            json.dump(corpus, open(CORPUS, "w"), indent=1); open(CORPUS, "a").write("\n")
        sys.exit(1 if bad else 0)
    finally:
        for p in procs:
            p.terminate()
        server.shutdown()


if __name__ == "__main__":
    main()

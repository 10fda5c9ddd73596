#!/usr/bin/env python3
"""API-driven callbacks under load: `POST /v1/calls/callback` at `--rate` per second for
`--duration` seconds. Each callback calls `first` (a SIPp UAS on a trunk, answering at once and
waiting for our BYE), then `second` (another SIPp UAS that answers and hangs up after `--hold`
seconds), and bridges them. Reports the requests answered 201, the callbacks whose CDR shows
both parties answered and NORMAL_CLEARING (target: every one), the API's answer time, and
Callplane's CPU per callback.

usage: python3 bench/api_callback.py [--rate 200] [--duration 60] [--hold 1.0]"""

import argparse
import os
import selectors
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import json

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

KEY = "cp_bench_api_callback_admin_key_0001"
UAS = os.path.join(common.ROOT, "tests", "sipp", "uas_answer.xml")


def uas(work, name, n, hangup_ms, timeout):
    port = common.free_port()
    d = os.path.join(work, name)
    os.makedirs(d)
    p = subprocess.Popen(
        ["sipp", "-sf", UAS, "-i", "127.0.0.1", "-p", str(port), "-mp", str(common.free_port()),
         "-m", str(n), "-max_socket", "10000", "-set", "rtp_port", "9", "-set", "answer_delay_ms", "0",
         "-set", "hangup_after_ms", str(hangup_ms), "-trace_stat", "-fd", "1", "-trace_err",
         "-nostdin", "-timeout", f"{timeout}s"],
        cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--hold", type=float, default=1.0)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    total = a.rate * a.duration
    work = tempfile.mkdtemp(prefix="callplane-api-callback-")
    timeout = a.duration + 60
    first, first_port = uas(work, "first", total, 0, timeout)
    second, second_port = uas(work, "second", total, int(a.hold * 1000), timeout)
    time.sleep(1)
    prov = common.bench_api_key(KEY) + f"""
[[tenants]]
name = "bench"
customerNumber = 1

[[trunks]]
tenant = "bench"
name = "first"
host = "127.0.0.1"
port = {first_port}

[[trunks]]
tenant = "bench"
name = "second"
host = "127.0.0.1"
port = {second_port}
"""
    srv = common.Server(prov, nofile=20000)
    sel = selectors.DefaultSelector()
    idle, busy = [], {}
    answered, statuses, api_ms = 0, {}, []

    def readable(c):
        nonlocal answered
        data = c.recv(65536)
        if not data:
            sel.unregister(c)
            if busy.pop(c, None) is not None:
                statuses["closed"] = statuses.get("closed", 0) + 1
            return
        t0, buf = busy[c]
        buf += data
        if b"\r\n\r\n" not in buf:
            return
        head, body = bytes(buf).split(b"\r\n\r\n", 1)
        length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")
                       if l.lower().startswith(b"content-length:")), 0)
        if len(body) < length:
            return
        status = int(head.split(b" ", 2)[1])
        statuses[status] = statuses.get(status, 0) + 1
        api_ms.append((time.monotonic() - t0) * 1000)
        del busy[c]
        idle.append((c, time.monotonic()))

    cpu0 = srv.cpu_seconds()
    start = time.monotonic()
    sent = 0
    n = 0
    while sent < total or busy:
        now = time.monotonic()
        while sent < total and start + sent / a.rate <= now:
            c = None
            while idle and c is None:
                c, used = idle.pop()
                # The server closes a kept-alive connection idle for its header timeout
                # (10 s); one idle half that long is not reused (a POST is not retried).
                if now - used > 5:
                    sel.unregister(c)
                    c.close()
                    c = None
            if c is None:
                c = socket.create_connection(("127.0.0.1", srv.http_port))
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ, c)
            body = json.dumps({
                "tenant": "bench",
                "first": {"destinationType": "SIP_TRUNK", "destination": f"49301{sent:06d}@first"},
                "second": {"destinationType": "SIP_TRUNK", "destination": f"49302{sent:06d}@second", "timeout": 20},
                "billingAccount": "bench",
            }).encode()
            req = (f"POST /v1/calls/callback HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            busy[c] = (time.monotonic(), bytearray())
            c.sendall(req)
            sent += 1
        for key, _ in sel.select(0.002):
            readable(key.data)
        if time.monotonic() - start > a.duration + 30:
            break
    # Every callback over: the second parties hung up, their CDRs written.
    db = os.path.join(srv.dir, "data", "callplane.db")
    deadline = time.time() + 60
    ok = rows = 0
    while time.time() < deadline:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            rows = con.execute("SELECT count(*) FROM cdrs").fetchone()[0]
            if rows >= statuses.get(201, 0):
                ok = con.execute(
                    "SELECT count(*) FROM cdrs c WHERE c.hangup_cause = 'NORMAL_CLEARING' AND "
                    "(SELECT count(*) FROM cdr_legs l WHERE l.call_id = c.call_id AND l.answer_time IS NOT NULL) = 2"
                ).fetchone()[0]
                con.close()
                break
            con.close()
        except sqlite3.Error:
            pass
        time.sleep(1)
    cpu = srv.cpu_seconds() - cpu0
    srv.stop()
    for p in (first, second):
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
    created = statuses.get(201, 0)
    failed = total - ok
    p = lambda q: common.percentile(api_ms, q)
    rows_out = [
        common.machine_row(),
        ("callbacks", f"{total} requested at {a.rate}/s for {a.duration} s, the second party hanging up after {a.hold} s"),
        ("API answers", f"{statuses} ; time to answer p50 {p(50):.2f} ms, p99 {p(99):.2f} ms"),
        ("connected and cleared", f"{ok} of {total} (CDR: both legs answered, NORMAL_CLEARING); {rows} CDRs; failed {failed}"),
        ("callplane CPU", f"{cpu:.1f} s, {1000 * cpu / max(total, 1):.2f} ms of CPU per callback ({100 * cpu / a.duration:.0f} % of a core)"),
    ]
    common.report("api_callback", rows_out, {
        "rate": a.rate, "duration": a.duration, "hold": a.hold, "requested": total,
        "statuses": statuses, "connected": ok, "cdrs": rows, "failed": failed,
        "api_ms": {"p50": p(50), "p99": p(99)}, "cpu_seconds": cpu,
    })
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

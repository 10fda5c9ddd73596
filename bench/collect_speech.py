#!/usr/bin/env python3
"""COLLECT_SPEECH on the built-in recognizer, through the real binary: how many callers one
core serves in real time.

Callplane runs with `[asr] threads = 1` (one core recognises) and the model preloaded. A plan of one COLLECT_SPEECH
(no prompt: it listens at once) and a HANGUP. `--calls` callers (one UDP SIP socket, an RTP
socket each) call in at once and, after 0.5 s (plus up to `--spread` seconds, so they do not
all speak together), say espeak-ng's "one two three four" as 20 ms μ-law packets, then
silence until the BYE. Measured per call on one monotonic clock: end of speech → BYE, less
the 800 ms of silence that ends an utterance = the caller's wait for recognition (queueing
included). Also: how many variables hold the right words (from the CDR file), and CPU.
A load is kept up with when every call is answered right and the wait stays near one
utterance's recognition time instead of growing with the number of calls.

usage: python3 bench/collect_speech.py [--calls 8] [--spread 4] [--threads 1] [--no-build]"""

import argparse
import os
import random
import selectors
import socket
import sqlite3
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PHRASE = "one two three four"
END_OF_SPEECH = 0.8


def provisioning(threads):
    return f"""
[asr]
threads = {threads}
preload = true

[[tenants]]
name = "bench"
customerNumber = 1

[[numbers]]
number = "100"
tenant = "bench"
routingPlan = "speech"

[[routingPlans]]
tenant = "bench"
name = "speech"
blocks = [
  {{ blockType = "COLLECT_SPEECH", language = "en-US", variableName = "answer", maxTries = 1, timeout = 30 }},
  {{ blockType = "HANGUP" }},
]
"""


def phrase_ulaw():
    raw = subprocess.run(
        f"espeak-ng -v en-us --stdout '{PHRASE}' | sox -t wav - -t raw -r 8000 -e mu-law -b 8 -c 1 -",
        shell=True, check=True, capture_output=True).stdout
    return [raw[i:i + 160].ljust(160, b"\xff") for i in range(0, len(raw), 160)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--spread", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    frames = phrase_ulaw()
    silence = b"\xff" * 160
    srv = common.Server(provisioning(a.threads))
    time.sleep(1.5 * a.threads)  # the model loads at start (preload)
    sel = selectors.DefaultSelector()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    sip.setblocking(False)
    local = sip.getsockname()
    server = ("127.0.0.1", srv.sip_port)
    sel.register(sip, selectors.EVENT_READ)
    rng = random.Random(7)
    calls = {}
    for i in range(a.calls):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", 0))
        r.setblocking(False)
        calls[f"bench-speech-{i}"] = {"i": i, "rtp": r, "remote": None, "answered": None,
                                      "speak_at": 0.5 + rng.uniform(0, a.spread), "seq": 0,
                                      "speech_end": None, "bye": None}
        sip.sendto(common.sip_invite(i, local, server, r.getsockname()[1], 2000000 + i,
                                     f"bench-speech-{i}"), server)
    cpu0 = srv.cpu_seconds()
    deadline = time.monotonic() + a.spread + 60
    tick = time.monotonic()
    while time.monotonic() < deadline and any(c["bye"] is None for c in calls.values()):
        for _ in sel.select(max(0.0, tick - time.monotonic())):
            while True:
                try:
                    data, _ = sip.recvfrom(65536)
                except BlockingIOError:
                    break
                msg = data.decode(errors="replace")
                line, h = common.sip_headers(msg)
                c = calls.get(h.get("call-id", ""))
                if c is None:
                    continue
                if line.startswith("SIP/2.0 200") and "INVITE" in h.get("cseq", ""):
                    sip.sendto(common.sip_ack(h, local, server), server)
                    if c["answered"] is None:
                        body = msg.split("\r\n\r\n", 1)[1]
                        ip = [l for l in body.split("\r\n") if l.startswith("c=")][0].split()[-1]
                        port = int([l for l in body.split("\r\n") if l.startswith("m=audio")][0].split()[1])
                        c["remote"], c["answered"] = (ip, port), time.monotonic()
                elif line.startswith("BYE"):
                    sip.sendto(common.sip_ok_for(msg), server)
                    c["bye"] = c["bye"] or time.monotonic()
        now = time.monotonic()
        if now < tick:
            continue
        tick += 0.02
        for c in calls.values():
            if c["answered"] is None or c["bye"] is not None:
                continue
            k = int((now - c["answered"] - c["speak_at"]) / 0.02)
            payload = frames[k] if 0 <= k < len(frames) else silence
            if k == len(frames) and c["speech_end"] is None:
                c["speech_end"] = now
            pkt = struct.pack("!BBHII", 0x80, 0, c["seq"] & 0xFFFF, c["seq"] * 160, 0x5000 + c["i"]) + payload
            c["seq"] += 1
            c["rtp"].sendto(pkt, c["remote"])
    cpu = srv.cpu_seconds() - cpu0
    time.sleep(1)
    db = os.path.join(srv.dir, "data", "callplane.db")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    answers = [v for (v,) in con.execute("SELECT value FROM cdr_variables WHERE name = 'answer'")]
    srv.stop()
    waits = sorted((c["bye"] - c["speech_end"] - END_OF_SPEECH) * 1000
                   for c in calls.values() if c["bye"] and c["speech_end"])
    right = sum(1 for v in answers if v == PHRASE)
    speech_s = len(frames) * 0.02
    rows = [
        common.machine_row(),
        ("calls", f"{a.calls} at once, speaking within {a.spread:.1f} s of each other, "
                  f"recognizer threads {a.threads}"),
        ("said", f"{PHRASE!r} ({speech_s:.2f} s, espeak-ng en-us, μ-law RTP)"),
        ("heard right", f"{right} of {a.calls} (CDR variables: {len(answers)})"),
        ("end of speech → result (less 800 ms end-of-speech silence)",
         f"p50 {common.percentile(waits, 50):.0f} ms, p99 {common.percentile(waits, 99):.0f} ms, "
         f"max {max(waits, default=float('nan')):.0f} ms"),
        ("CPU (Callplane)", f"{cpu:.2f} s ({cpu / max(1, a.calls):.2f} s per call)"),
    ]
    common.report(f"collect_speech_{a.calls}", rows, {
        "calls": a.calls, "spread_s": a.spread, "threads": a.threads, "right": right,
        "wait_ms": {"p50": common.percentile(waits, 50), "p99": common.percentile(waits, 99),
                    "max": max(waits, default=None)},
        "cpu_seconds": cpu,
    })


if __name__ == "__main__":
    main()

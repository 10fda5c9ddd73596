#!/usr/bin/env python3
"""SAY: time to first audio for an uncached sentence, p50/p99.

A plan of one SAY (TENIOS voice `en-us.female.1`, espeak-ng) and a HANGUP; each call's sentence
names its caller (`${caller_id_number}`, a From user unique per call), so every call renders a
sentence nobody asked for before — nothing comes from the TTS cache. This script is the caller:
one UDP socket sends INVITEs at `--rate` per second, each call has its own RTP socket, and the
time measured on one monotonic clock is INVITE sent → first RTP packet whose payload is not
silence (the answer waits for the prompt, so this is the caller's wait for the first word:
rendering, reading the WAV back, resampling, RTP). `--cached` repeats one sentence instead, for
the cached figure. Reports p50/p99/max, failures (no 200, no audio within 10 s), and CPU.

usage: python3 bench/say_first_audio.py [--calls 200] [--rate 5] [--cached] [--no-build]"""

import argparse
import os
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def provisioning(cached):
    text = "Welcome to the service desk. Your call is important to us." if cached else \
        "Welcome caller ${caller_id_number}. Your call is important to us."
    return f"""
[[tenants]]
name = "bench"
customerNumber = 1

[[numbers]]
number = "100"
tenant = "bench"
routingPlan = "say"

[[routingPlans]]
tenant = "bench"
name = "say"
blocks = [
  {{ blockType = "SAY", voiceName = "en-us.female.1", text = "{text}" }},
  {{ blockType = "HANGUP" }},
]
"""










def cpu_with_children(srv):
    """Callplane's CPU seconds with its waited-for children's (espeak-ng runs as a program)."""
    with open(f"/proc/{srv.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / common.CLK_TCK


def audible(payload):
    """PCMU that is not silence (0xFF/0x7F and their neighbours)."""
    return sum(1 for b in payload if (b & 0x7F) < 0x70) > 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--cached", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    srv = common.Server(provisioning(a.cached))
    sel = selectors.DefaultSelector()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    sip.setblocking(False)
    local = sip.getsockname()
    server = ("127.0.0.1", srv.sip_port)
    sel.register(sip, selectors.EVENT_READ, ("sip", None))
    sent, first, rtp_of = {}, {}, {}
    failures = {"no_answer": 0, "no_audio": 0}
    answered = set()
    start = time.monotonic() + 0.5
    cpu0 = cpu_with_children(srv)
    nxt = 0
    end = start + a.calls / a.rate + 12
    while time.monotonic() < end:
        now = time.monotonic()
        while nxt < a.calls and start + nxt / a.rate <= now:
            r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            r.bind(("127.0.0.1", 0))
            r.setblocking(False)
            sel.register(r, selectors.EVENT_READ, ("rtp", nxt))
            rtp_of[nxt] = r
            sent[nxt] = time.monotonic()
            sip.sendto(common.sip_invite(nxt, local, server, r.getsockname()[1], 1000000 + nxt,
                                          f"bench-say-{nxt}"), server)
            nxt += 1
        if nxt == a.calls and len(first) + failures["no_answer"] >= a.calls:
            break
        for key, _ in sel.select(0.005):
            kind, i = key.data
            if kind == "rtp":
                s = rtp_of[i]
                while True:
                    try:
                        pkt = s.recv(2048)
                    except BlockingIOError:
                        break
                    if i not in first and len(pkt) > 12 and audible(pkt[12:]):
                        first[i] = time.monotonic() - sent[i]
                        sel.unregister(s)
                        s.close()
                        break
                continue
            while True:
                try:
                    data, _ = sip.recvfrom(65536)
                except BlockingIOError:
                    break
                msg = data.decode(errors="replace")
                line, h = common.sip_headers(msg)
                if line.startswith("SIP/2.0 200") and "INVITE" in h.get("cseq", ""):
                    cid = h["call-id"]
                    if cid not in answered:
                        answered.add(cid)
                    sip.sendto(common.sip_ack(h, local, server), server)
                elif line.startswith("BYE"):
                    sip.sendto(common.sip_ok_for(msg), server)
    cpu = cpu_with_children(srv) - cpu0
    failures["no_audio"] = a.calls - len(first)
    failures["no_answer"] = a.calls - len(answered)
    srv.stop()
    lat = [v * 1000 for v in first.values()]
    mode = "cached sentence" if a.cached else "uncached sentences"
    rows = [
        common.machine_row(),
        ("calls", f"{a.calls} at {a.rate}/s, {mode}, espeak-ng voice en-us.female.1"),
        ("INVITE → first audio",
         f"p50 {common.percentile(lat, 50):.1f} ms, p99 {common.percentile(lat, 99):.1f} ms, "
         f"max {max(lat, default=float('nan')):.1f} ms"),
        ("failures", ", ".join(f"{k} {v}" for k, v in failures.items())),
        ("CPU (Callplane + espeak-ng)",
         f"{cpu:.2f} s ({cpu / max(1, a.calls) * 1000:.1f} ms per call)"),
    ]
    common.report("say_first_audio" + ("_cached" if a.cached else ""), rows, {
        "calls": a.calls, "rate": a.rate, "cached": a.cached,
        "first_audio_ms": {"p50": common.percentile(lat, 50), "p99": common.percentile(lat, 99),
                           "max": max(lat, default=None)},
        "failures": failures, "cpu_seconds": cpu,
    })


if __name__ == "__main__":
    main()

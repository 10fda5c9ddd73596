#!/usr/bin/env python3
"""STREAM to an echo bot: N concurrent calls whose plan is `[STREAM ws://…, HANGUP]`, against
`streamecho` (bench/wsload/src/bin/streamecho.rs), which is both the callers (raw SIP/UDP and
one RTP socket per call sending tagged 20 ms PCMU frames) and the bot (a WebSocket server in the
Twilio Media Streams format that sends every inbound frame straight back).

Measures, over a window after every call is streaming: the audio round trip caller → Callplane
→ bot → Callplane → caller (p50/p99/max; target p99 < 60 ms), frames lost on the way (target 0),
and Callplane's CPU (share of one core per stream) and memory (RSS over the idle server, per
stream).

usage: python3 bench/stream_echo.py [--calls 200] [--duration 30] [--no-build]"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

STREAMECHO = os.path.join(common.ROOT, "target", "release", "streamecho")


def provisioning(ws_port):
    return f"""
[[tenants]]
name = "bench"
customerNumber = 1

[[numbers]]
number = "100"
tenant = "bench"
routingPlan = "bot"

[[routingPlans]]
tenant = "bench"
name = "bot"
blocks = [
  {{ blockType = "STREAM", url = "ws://127.0.0.1:{ws_port}/media", track = "inbound" }},
  {{ blockType = "HANGUP" }},
]
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--rate", type=float, default=50.0, help="calls set up per second")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
        common.build_package("wsload")
    ws_port = common.free_port()
    srv = common.Server(provisioning(ws_port))
    time.sleep(1.0)
    rss_idle = srv.rss_bytes()
    tool = subprocess.Popen(
        [STREAMECHO, "--sip-port", str(srv.sip_port), "--ws-port", str(ws_port),
         "--calls", str(a.calls), "--duration", str(a.duration), "--rate", str(a.rate)],
        stdout=subprocess.PIPE, text=True)
    # The tool's window starts after the ramp and 3 s of warm-up; sample CPU over it.
    time.sleep(a.calls / a.rate + 3.5)
    cpu0, t0 = srv.cpu_seconds(), time.monotonic()
    rss_peak = srv.rss_bytes()
    while time.monotonic() < t0 + a.duration - 1:
        time.sleep(1)
        rss_peak = max(rss_peak, srv.rss_bytes())
    cpu, wall = srv.cpu_seconds() - cpu0, time.monotonic() - t0
    out, _ = tool.communicate(timeout=a.duration + 60)
    srv.stop()
    r = json.loads(out.strip().splitlines()[-1])
    per_stream_core = cpu / wall / max(1, r["streaming"]) * 100
    rows = [
        common.machine_row(),
        ("calls", f"{r['calls']} ({r['answered']} answered, {r['failed']} failed, "
                  f"{r['streaming']} streaming when the window opened), {a.duration} s window"),
        ("round trip caller→bot→caller",
         f"p50 {r['rtt_ms']['p50']:.1f} ms, p99 {r['rtt_ms']['p99']:.1f} ms, "
         f"max {r['rtt_ms']['max']:.1f} ms"),
        ("frames", f"{r['sent']} sent, {r['echoed']} came back, {r['lost']} lost"),
        ("Callplane CPU", f"{cpu / wall * 100:.1f}% of a core ({per_stream_core:.3f}% per stream)"),
        ("Callplane RSS", f"idle {rss_idle / 2**20:.1f} MiB, streaming {rss_peak / 2**20:.1f} MiB "
                          f"({(rss_peak - rss_idle) / max(1, r['streaming']) / 1024:.0f} KiB per stream)"),
    ]
    common.report("stream_echo", rows, dict(r, cpu_core_share=cpu / wall,
                                            rss_idle=rss_idle, rss_peak=rss_peak))


if __name__ == "__main__":
    main()

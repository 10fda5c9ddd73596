#!/usr/bin/env python3
"""Idle-connection benchmark: N idle TCP connections (no bytes sent) are held open against each
of the SIP and HTTP ports, from 10 loopback source addresses, with a descriptor limit and
connection caps that allow them all; meanwhile SIPp places calls at a fixed rate (UDP) to a plan
that answers, plays 2 s and hangs up. Reports failed calls, INVITE->200 p50/p99/max (SIPp's
microsecond message trace), how many idle connections the server held before and after the
calls, the server's descriptors, CPU and RSS.

The descriptors a process may hold are capped by its hard limit, which an unprivileged process
(or a container without CAP_SYS_RESOURCE) cannot raise: `--ports sip` or `--ports http` holds
the idle connections against one port; `--ports both` against both (each process here needs
2 x N descriptors, so N is limited to about (hard limit - 2000) / 2).

usage: python3 bench/idle_connections.py [--idle 10000] [--ports sip|http|both] [--rate 500]
                                         [--duration 30]"""

import argparse
import os
import resource
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def open_idle(n, port, sources):
    out, errors = [], 0
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((sources[i % len(sources)], 0))
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            out.append(s)
        except OSError:
            errors += 1
            s.close()
    return out, errors


def still_open(socks):
    """Connections the server has not closed (no EOF, no reset, nothing pending)."""
    n = 0
    for s in socks:
        try:
            data = s.recv(1)
            if data:
                n += 1  # the server sent something: still open
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=10000, help="idle connections per port")
    ap.add_argument("--ports", choices=["sip", "http", "both"], default="both")
    ap.add_argument("--reserve", type=int, default=1500, help="reservedDescriptors of the server")
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    sip_n = a.idle if a.ports in ("sip", "both") else 0
    http_n = a.idle if a.ports in ("http", "both") else 0
    need = sip_n + http_n + a.reserve + 500
    if hard != resource.RLIM_INFINITY and need > hard:
        sys.exit(f"{sip_n + http_n} idle connections need {need} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="callplane-idle-")
    prompt = os.path.join(work, "two-seconds.wav")
    common.write_tone_wav(prompt, 2.0)
    srv = common.Server(f"""
[[tenants]]
name = "bench"
customerNumber = 1

[[announcements]]
tenant = "bench"
name = "two-seconds"
file = "{prompt}"

[[numbers]]
number = "100"
tenant = "bench"
routingPlan = "answer-play-hangup"

[[routingPlans]]
tenant = "bench"
name = "answer-play-hangup"
blocks = [
  {{ blockType = "ANNOUNCEMENT", announcementName = "two-seconds" }},
  {{ blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" }},
]
""", extra_server=f"""
sipTcpMaxConnections = {sip_n + 100}
sipTcpMaxConnectionsPerSource = {sip_n + 100}
httpMaxConnections = {http_n + 100}
httpMaxConnectionsPerSource = {http_n + 100}
sipTcpFirstMessageTimeout = 3600
httpHeaderReadTimeout = 3600
httpIdleTimeout = 3600
reservedDescriptors = {a.reserve}
""", nofile=min(hard, need) if hard != resource.RLIM_INFINITY else need)
    try:
        time.sleep(1)
        base_fds = srv.open_fds()
        base_rss = srv.rss_bytes()
        sources = [f"127.0.0.{i}" for i in range(2, 12)]
        t0 = time.time()
        sip_idle, sip_err = open_idle(sip_n, srv.sip_port, sources)
        http_idle, http_err = open_idle(http_n, srv.http_port, sources)
        open_s = time.time() - t0
        time.sleep(2)
        held_before = (still_open(sip_idle), still_open(http_idle))
        fds_held = srv.open_fds()
        rss_held = srv.rss_bytes()
        cpu0 = srv.cpu_seconds()
        sampler = common.Sampler(srv)
        sampler.start()
        run = common.run_sipp_setup(work, srv, 100, a.rate, a.rate * a.duration, a.duration + 60)
        cpu = srv.cpu_seconds() - cpu0
        sampler.stop_flag.set()
        sampler.join()
        held_after = (still_open(sip_idle), still_open(http_idle))
        setup = common.rtt_summary(run["setup_ms"])
        peak = max((r for _, r in sampler.samples), default=0)
        rows = [
            ("idle connections", f"{sip_n} to SIP/TCP + {http_n} to HTTP from {len(sources)} sources "
                                 f"(opened in {open_s:.1f} s, connect errors {sip_err}/{http_err})"),
            ("held by the server before calls", f"SIP {held_before[0]}, HTTP {held_before[1]}"),
            ("held after calls", f"SIP {held_after[0]}, HTTP {held_after[1]}"),
            ("server descriptors", f"{base_fds} idle, {fds_held} holding the connections"),
            ("load", f"{a.rate} calls/s for {a.duration} s ({a.rate * a.duration} calls, UDP, 2 s announcement)"),
            ("successful / failed calls", f"{run['successful']} / {run['failed']}"),
            ("INVITE->200 p50 / p99 / max", common.fmt_rtt(setup)),
            ("server CPU during calls", f"{cpu:.1f} s over {run['elapsed_s']:.1f} s = "
                                        f"{100 * cpu / run['elapsed_s']:.0f}% of one core"),
            ("RSS", f"{base_rss / 1e6:.1f} MB idle, {rss_held / 1e6:.1f} MB holding, {peak / 1e6:.1f} MB peak"),
            ("sipp exit", str(run["exit"])),
            common.machine_row(),
        ]
        common.report("idle_connections", rows, {
            "idle": [sip_n, http_n], "sources": len(sources), "open_s": open_s,
            "connect_errors": [sip_err, http_err], "held_before": held_before, "held_after": held_after,
            "fds": [base_fds, fds_held], "rate": a.rate, "duration_s": a.duration,
            "successful": run["successful"], "failed": run["failed"], "invite_to_200_ms": setup,
            "cpu_seconds": cpu, "rss_bytes": [base_rss, rss_held, peak], "sipp_exit": run["exit"],
        }, stamp=True)
        if run["exit"] != 0:
            print(common.sipp_failure_details(run))
        for s in sip_idle + http_idle:
            s.close()
    finally:
        srv.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Event fan-out: `--clients` WebSocket subscribers (bench/wsload) each receive every event of
calls placed by SIPp at `--rate` per second (bench/sipp/uac_setup.xml into a plan that plays a
1 s tone and hangs up). Reports what each subscriber received (every client must get every
event), the delivery delay (event `time` to arrival, ms, one clock), and INVITE->200 p50/p99
with and without the subscribers (SIPp message-trace timestamps), plus Callplane's CPU.

The subscribers' client stands in for applications on other machines, but shares this one's
cores: it runs at nice 19 (`--client-nice`), so it takes the CPU Callplane and SIPp leave
rather than competing with the calls it measures. Its own scheduling delays still count in the
delivery delay it reports. `--client-nice 0` runs it at normal priority.

usage: python3 bench/events_fanout.py [--clients 1000] [--rate 100] [--duration 30]
                                      [--client-nice 19]"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

KEY = "cp_bench_events_fanout_admin_key_01"
WSLOAD = os.path.join(common.ROOT, "target", "release", "wsload")


def setup_run(work, srv, rate, duration):
    cpu0 = srv.cpu_seconds()
    r = common.run_sipp_setup(work, srv, 100, rate, rate * duration, duration + 30)
    cpu = srv.cpu_seconds() - cpu0
    ms = r["setup_ms"]
    return r, cpu, common.percentile(ms, 50), common.percentile(ms, 99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--client-nice", type=int, default=19)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
        common.build_package("wsload")
    work = tempfile.mkdtemp(prefix="callplane-fanout-")
    prompt = os.path.join(work, "tone.wav")
    common.write_tone_wav(prompt, 1.0)
    prov = common.bench_api_key(KEY) + common.answer_play_hangup(prompt)
    extra = "httpMaxConnections = 4096\nhttpMaxConnectionsPerSource = 4096\n"
    srv = common.Server(prov, extra_server=extra, nofile=20000)
    try:
        base, base_cpu, base_p50, base_p99 = setup_run(work, srv, a.rate, a.duration)
        load = subprocess.Popen(
            [WSLOAD, "--port", str(srv.http_port), "--key", KEY, "--clients", str(a.clients),
             "--duration", str(a.duration + 25)],
            stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(a.client_nice))
        ready = json.loads(load.stdout.readline())
        time.sleep(3)
        fan, fan_cpu, fan_p50, fan_p99 = setup_run(work, srv, a.rate, a.duration)
        out = json.loads(load.stdout.readline())
        load.wait()
    finally:
        srv.stop()
    calls = fan["successful"] or 0
    per_call = (out["per_client_max"] / calls) if calls else float("nan")
    rows = [
        common.machine_row(),
        ("subscribers", f"{ready['ready']} of {a.clients} connected and subscribed; {out['closed_by_server']} closed by the server; their client at nice {a.client_nice}"),
        ("calls", f"baseline {base['successful']} ok / {base['failed']} failed; with subscribers {fan['successful']} ok / {fan['failed']} failed, at {a.rate}/s for {a.duration} s"),
        ("events per subscriber", f"min {out['per_client_min']}, max {out['per_client_max']} (~{per_call:.1f} per call); {out['events']} delivered in all"),
        ("delivery delay", f"p50 {out['delay_ms']['p50']} ms, p99 {out['delay_ms']['p99']} ms, max {out['delay_ms']['max']} ms (1 ms resolution)"),
        ("INVITE->200", f"without subscribers p50 {base_p50:.2f} / p99 {base_p99:.2f} ms; with them p50 {fan_p50:.2f} / p99 {fan_p99:.2f} ms"),
        ("callplane CPU", f"{100 * base_cpu / a.duration:.0f} % of a core without, {100 * fan_cpu / a.duration:.0f} % with the subscribers"),
    ]
    common.report("events_fanout", rows, {
        "clients": a.clients, "rate": a.rate, "duration": a.duration, "client_nice": a.client_nice, "wsload": out,
        "baseline": {"ok": base["successful"], "failed": base["failed"], "p50": base_p50, "p99": base_p99, "cpu_s": base_cpu},
        "fanout": {"ok": fan["successful"], "failed": fan["failed"], "p50": fan_p50, "p99": fan_p99, "cpu_s": fan_cpu},
    })


if __name__ == "__main__":
    main()

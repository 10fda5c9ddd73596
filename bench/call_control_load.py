#!/usr/bin/env python3
"""Call Control under load: SIPp places calls at a fixed rate (bench/sipp/uac_setup.xml) to a plan
[CALL_CONTROL -> webhookd instant-announce, HANGUP]. The webhook (bench/webhookd, on loopback)
answers loop 0 with a 2 s ANNOUNCEMENT, which answers the call, and loop 1 with [] (back to the
plan, which hangs up): two webhook requests per call. Reports failed calls (target 0), calls
completed, INVITE->200 p50/p99 (SIPp message-trace timestamps, microseconds; SIPp's own rtd
trace beside it, in 4 ms steps), the requests webhookd saw and Callplane's outcome counts from
/metrics (all "ok"), the webhook round trip as Callplane measured it, and the server's CPU and
memory (webhookd's and SIPp's CPU too: they share the machine).

usage: python3 bench/call_control_load.py [--rate 500] [--duration 60]"""

import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ANNOUNCEMENT = "two-seconds"
WEBHOOK_TIMEOUT_MS = 2000


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
        common.build_package("webhookd")
    total = a.rate * a.duration
    work = tempfile.mkdtemp(prefix="callplane-cc-load-")
    prompt = os.path.join(work, f"{ANNOUNCEMENT}.wav")
    common.write_tone_wav(prompt, 2.0)
    hook = common.Webhookd("instant-announce", work, announcement=ANNOUNCEMENT)
    srv = None
    try:
        # No fallbackPlan: a failed webhook request leads straight to the HANGUP, before any
        # answer, so it shows as a failed call.
        srv = common.Server(f"""
[[tenants]]
name = "bench"
customerNumber = 1

[[announcements]]
tenant = "bench"
name = "{ANNOUNCEMENT}"
file = "{prompt}"

[[numbers]]
number = "101"
tenant = "bench"
routingPlan = "webhook-play-hangup"

[[routingPlans]]
tenant = "bench"
name = "webhook-play-hangup"
blocks = [
  {{ blockType = "CALL_CONTROL", url = "{hook.url}", timeout = {WEBHOOK_TIMEOUT_MS} }},
  {{ blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" }},
]
""")
        time.sleep(2)
        idle_rss = srv.rss_bytes()
        cpu0, hook_cpu0, sipp_cpu0 = srv.cpu_seconds(), hook.cpu_seconds(), children_cpu()
        busy0 = common.machine_busy()
        sampler = common.Sampler(srv)
        sampler.start()
        run = common.run_sipp_setup(work, srv, 101, a.rate, total, a.duration + 60)
        cpu = srv.cpu_seconds() - cpu0
        hook_cpu = hook.cpu_seconds() - hook_cpu0
        sipp_cpu = children_cpu() - sipp_cpu0
        busy = common.busy_pct(busy0, common.machine_busy())
        sampler.stop_flag.set()
        sampler.join()
        peak_rss = max((r for _, r in sampler.samples), default=0)
        elapsed = run["elapsed_s"]
        stats = hook.stats()
        series = common.webhook_series(srv.metrics(), "call_control")
    finally:
        if srv:
            srv.stop()
        hook_summary = hook.stop()

    setup = common.rtt_summary(run["setup_ms"])
    rtd = common.rtt_summary(run["rtts"])
    latency = common.webhook_latency(series)
    completed = run["successful"]
    per_call = stats["requests"] / completed if completed else float("nan")
    not_ok = sum(v for k, v in series["outcomes"].items() if k != "ok")
    verdict = "PASS" if run["failed"] == 0 and completed == total and not_ok == 0 else "FAIL"
    rows = [
        common.machine_row(),
        ("load", f"{a.rate} calls/s for {a.duration} s ({total} calls), plan [CALL_CONTROL -> webhookd "
                 f"instant-announce (loop 0: 2 s ANNOUNCEMENT, loop 1: []), HANGUP]"),
        ("calls completed", str(completed)),
        ("failed calls", f"{run['failed']} (retransmissions {run['retransmissions']}, sipp exit {run['exit']})"),
        ("INVITE->200 p50 / p99 / max", common.fmt_rtt(setup) + ", SIPp message trace"),
        ("  SIPp rtd p50 / p99 / max", common.fmt_rtt(rtd) + (f", {rtd['resolution_ms']:g} ms steps"
                                                               if rtd["resolution_ms"] else "")),
        ("webhook requests (webhookd)", f"{stats['requests']} = {per_call:.2f} per completed call (expect 2); "
                                        "by loopCount " + ", ".join(f"{k}: {v}" for k, v in stats["byLoopCount"].items())),
        ("webhook outcomes (/metrics)", common.fmt_outcomes(series["outcomes"])),
        ("webhook round trip (server)", common.fmt_webhook_latency(latency)),
        ("server CPU", f"{cpu:.1f} s over {elapsed:.1f} s = {100 * cpu / elapsed:.0f}% of one core"),
        ("idle RSS", f"{idle_rss / 1e6:.1f} MB"),
        ("peak RSS under load", f"{peak_rss / 1e6:.1f} MB"),
        ("other CPU (same machine)", f"webhookd {100 * hook_cpu / elapsed:.0f}%, SIPp {100 * sipp_cpu / elapsed:.0f}% "
                                     f"of one core; machine {busy:.0f}% busy (all cores)"),
        ("target", f"0 failed calls, all webhook outcomes ok: {verdict}"),
    ]
    common.report("call_control_load", rows, {
        "rate": a.rate, "duration_s": a.duration, "calls": total, "successful": completed,
        "failed": run["failed"], "retransmissions": run["retransmissions"], "sipp_exit": run["exit"],
        "invite_to_200_ms": setup, "sipp_rtd_ms": rtd,
        "webhookd": stats, "webhook_requests_per_call": per_call, "webhook_outcomes": series["outcomes"],
        "webhook_latency": latency, "webhook_timeout_ms": WEBHOOK_TIMEOUT_MS,
        "cpu_seconds": cpu, "elapsed_s": elapsed, "idle_rss_bytes": idle_rss, "peak_rss_bytes": peak_rss,
        "webhookd_cpu_seconds": hook_cpu, "sipp_cpu_seconds": sipp_cpu, "machine_busy_pct": busy,
        "verdict": verdict, "webhookd_summary": hook_summary,
    }, stamp=True)
    if run["exit"] != 0:
        print(common.sipp_failure_details(run))


if __name__ == "__main__":
    main()

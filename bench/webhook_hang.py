#!/usr/bin/env python3
"""A customer server that never answers: SIPp places calls at a fixed rate (bench/sipp/
uac_setup.xml) to a plan [CALL_CONTROL (timeout T, fallbackPlan "fallback"), HANGUP CALL_REJECTED]
whose webhook (bench/webhookd --mode hang) accepts every request and never answers. The fallback
plan [ANNOUNCEMENT two-seconds, HANGUP] answers the call, so the 200 OK marks the fallback running:

  INVITE->200   every call within T + 50 ms (max, p99, how many exceed it; SIPp message-trace
                timestamps, microseconds; SIPp's rtd trace beside it, in 4 ms steps)
  failed calls  0, and Callplane's outcome="timeout" count equal to the calls
  memory        the server's RSS (/proc/PID/status VmRSS) sampled every second: average of the
                first and of the last 10 s of the measured window, and the least-squares slope
                over it, MB/min. "flat" = the slope adds at most max(2 MB, 5 % of the mean) over
                the window. The window follows --warmup s of the same load: under any load the
                server's RSS climbs for its first ~50 s (ended SIP transactions are kept 32 s by
                the RFC 3261 timers, tables and caches grow to fit; a plan without webhook does
                the same) and then levels off, which is not a leak
  leftovers     requests webhookd still holds after the run (Callplane must close each
                connection it gave up on) and the server's open file descriptors

SIPp places calls for warmup + duration s in one run; latency, failures and timeouts count every
call, warm-up included.

usage: python3 bench/webhook_hang.py [--rate 200] [--duration 60] [--timeout-ms 1000] [--warmup 60]"""

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ANNOUNCEMENT = "two-seconds"
ANNOUNCEMENT_S = 2.0
MARGIN_MS = 50
FLAT_MB = 2.0
FLAT_SHARE = 0.05


class RssFdSampler(threading.Thread):
    """The server's RSS and open file descriptors once a second: (seconds since t0, bytes, fds)."""

    def __init__(self, server, t0):
        super().__init__(daemon=True)
        self.server, self.t0 = server, t0
        self.samples = []
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            try:
                fds = len(os.listdir(f"/proc/{self.server.proc.pid}/fd"))
                self.samples.append((time.time() - self.t0, self.server.rss_bytes(), fds))
            except OSError:
                return
            self.stop_flag.wait(1.0)


def mean(v):
    return sum(v) / len(v) if v else float("nan")


def slope_per_min(points):
    """Least-squares slope of (seconds, MB) points, MB per minute."""
    if len(points) < 2:
        return float("nan")
    mx, my = mean([p[0] for p in points]), mean([p[1] for p in points])
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return 60.0 * sxy / sxx if sxx else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--timeout-ms", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=60, help="seconds of load before the measured window")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
        common.build_package("webhookd")
    t_ms = a.timeout_ms
    total = a.rate * (a.warmup + a.duration)
    work = tempfile.mkdtemp(prefix="callplane-webhook-hang-")
    prompt = os.path.join(work, f"{ANNOUNCEMENT}.wav")
    common.write_tone_wav(prompt, ANNOUNCEMENT_S)
    hook = common.Webhookd("hang", work)
    srv = None
    try:
        srv = common.Server(f"""
[[tenants]]
name = "bench"
customerNumber = 1

[[announcements]]
tenant = "bench"
name = "{ANNOUNCEMENT}"
file = "{prompt}"

[[numbers]]
number = "102"
tenant = "bench"
routingPlan = "webhook-hang"

[[routingPlans]]
tenant = "bench"
name = "webhook-hang"
blocks = [
  {{ blockType = "CALL_CONTROL", url = "{hook.url}", timeout = {t_ms}, fallbackPlan = "fallback" }},
  {{ blockType = "HANGUP", hangupCause = "CALL_REJECTED" }},
]

[[routingPlans]]
tenant = "bench"
name = "fallback"
blocks = [
  {{ blockType = "ANNOUNCEMENT", announcementName = "{ANNOUNCEMENT}" }},
  {{ blockType = "HANGUP", hangupCause = "NORMAL_CLEARING" }},
]
""")
        time.sleep(2)
        idle_rss = srv.rss_bytes()
        idle_fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        cpu0, busy0 = srv.cpu_seconds(), common.machine_busy()
        t0 = time.time()
        sampler = RssFdSampler(srv, t0)
        sampler.start()
        # Calls last T + 2 s (+ setup); let SIPp keep all of them up with room to spare.
        limit = int(a.rate * (t_ms / 1000 + ANNOUNCEMENT_S + 5))
        run = common.run_sipp_setup(work, srv, 102, a.rate, total, a.warmup + a.duration + t_ms / 1000 + 60,
                                    limit=limit)
        cpu = srv.cpu_seconds() - cpu0
        busy = common.busy_pct(busy0, common.machine_busy())
        # Requests still open at webhookd once Callplane has given up on the last of them.
        time.sleep(t_ms / 1000 + 1)
        sampler.stop_flag.set()
        sampler.join()
        after_fds = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
        after_rss = srv.rss_bytes()
        stats = hook.stats()
        series = common.webhook_series(srv.metrics(), "call_control")
    finally:
        if srv:
            srv.stop()
        hook_summary = hook.stop()

    bound = t_ms + MARGIN_MS
    setup = common.rtt_summary(run["setup_ms"])
    rtd = common.rtt_summary(run["rtts"])
    over = sum(1 for v in run["setup_ms"] if v > bound)
    under_t = sum(1 for v in run["setup_ms"] if v < t_ms)
    timeouts = series["outcomes"].get("timeout", 0)
    other_outcomes = {k: v for k, v in series["outcomes"].items() if k != "timeout" and v}
    latency = common.webhook_latency(series)

    # Memory over the measured window, after the warm-up (which must at least cover the time
    # until as many calls end each second as begin: T + 2 s + 1 s).
    w0 = max(a.warmup, t_ms / 1000 + ANNOUNCEMENT_S + 1)
    w1 = a.warmup + a.duration
    steady = [(t, rss / 1e6) for t, rss, _ in sampler.samples if w0 <= t <= w1]
    first = [mb for t, mb in steady if t < w0 + 10]
    last = [mb for t, mb in steady if t >= w1 - 10]
    ramp = [(t, rss / 1e6) for t, rss, _ in sampler.samples if t_ms / 1000 + ANNOUNCEMENT_S + 1 <= t < w0]
    slope = slope_per_min(steady)
    window_min = (steady[-1][0] - steady[0][0]) / 60 if len(steady) > 1 else float("nan")
    growth = slope * window_min
    steady_mean = mean([mb for _, mb in steady])
    allowed = max(FLAT_MB, FLAT_SHARE * steady_mean)
    flat = growth <= allowed
    short = w1 - w0 < 20
    peak_rss = max((r for _, r, _ in sampler.samples), default=0)
    peak_fds = max((f for _, _, f in sampler.samples), default=0)

    ok = (run["failed"] == 0 and run["successful"] == total and over == 0 and timeouts == total
          and flat and stats["hangingNow"] == 0)
    verdict = "PASS" if ok else "FAIL"
    rows = [
        common.machine_row(),
        ("load", f"{a.rate} calls/s for {a.warmup} s warm-up + {a.duration} s measured ({total} calls); webhook "
                 f"never answers, timeout {t_ms} ms -> fallback [ANNOUNCEMENT {ANNOUNCEMENT_S:g} s, HANGUP]"),
        ("calls ok / failed", f"{run['successful']} / {run['failed']} (retransmissions {run['retransmissions']}, "
                              f"sipp exit {run['exit']})"),
        ("INVITE->200 p50 / p99 / max", common.fmt_rtt(setup) + ", SIPp message trace"),
        ("  SIPp rtd p50 / p99 / max", common.fmt_rtt(rtd) + (f", {rtd['resolution_ms']:g} ms steps"
                                                               if rtd["resolution_ms"] else "")),
        (f"calls over T + {MARGIN_MS} ms", f"{over} over {bound} ms (min {min(run['setup_ms'], default=float('nan')):.2f} ms)"),
        ("webhook outcomes (/metrics)", f"timeout {timeouts} of {total} calls"
                                        + (f"; others: {common.fmt_outcomes(other_outcomes)}" if other_outcomes else "")),
        ("webhook wait (server)", f"mean {latency['mean_ms']:.1f} ms over {latency['count']} requests, p99 in the "
                                  f"{latency['p99_bucket_ms'][0]:g}-{latency['p99_bucket_ms'][1]:g} ms bucket"),
        ("webhookd", f"{stats['requests']} requests; {stats['hangReleased']} closed by Callplane, "
                     f"{stats['hangingNow']} still held {t_ms / 1000 + 1:g} s after the last call"),
        ("RSS idle / peak / after", f"{idle_rss / 1e6:.1f} / {peak_rss / 1e6:.1f} / {after_rss / 1e6:.1f} MB"),
        ("RSS during warm-up", (f"{ramp[0][1]:.1f} -> {ramp[-1][1]:.1f} MB (t = {ramp[0][0]:.0f}-{ramp[-1][0]:.0f} s)"
                                if ramp else "no warm-up")),
        ("RSS first 10 s / last 10 s", f"{mean(first):.1f} / {mean(last):.1f} MB (window t = {w0:g}-{w1:g} s"
                                       + ("; too short for separate 10 s windows" if short else "") + ")"),
        ("RSS slope", f"{slope:+.2f} MB/min over {len(steady)} samples = {growth:+.2f} MB over the window: "
                      + ("flat" if flat else "GROWING") + f" (flat: <= {allowed:.1f} MB)"),
        ("server fds idle / peak / after", f"{idle_fds} / {peak_fds} / {after_fds}"),
        ("server CPU", f"{cpu:.1f} s over {run['elapsed_s']:.1f} s = {100 * cpu / run['elapsed_s']:.0f}% of one "
                       f"core (machine {busy:.0f}% busy)"),
        ("target", f"every call <= T + {MARGIN_MS} ms, 0 failed, timeouts = calls, flat RSS, nothing held: {verdict}"),
    ]
    common.report("webhook_hang", rows, {
        "rate": a.rate, "duration_s": a.duration, "warmup_s": a.warmup, "timeout_ms": t_ms, "calls": total,
        "successful": run["successful"], "failed": run["failed"], "retransmissions": run["retransmissions"],
        "sipp_exit": run["exit"], "invite_to_200_ms": setup, "sipp_rtd_ms": rtd,
        "bound_ms": bound, "over_bound": over, "under_timeout": under_t,
        "min_invite_to_200_ms": min(run["setup_ms"], default=None),
        "webhook_outcomes": series["outcomes"], "webhook_latency": latency, "webhookd": stats,
        "rss": {"idle_bytes": idle_rss, "peak_bytes": peak_rss, "after_bytes": after_rss,
                "window_s": [w0, w1], "first10_mb": mean(first), "last10_mb": mean(last),
                "slope_mb_per_min": slope, "growth_mb": growth, "flat_allowed_mb": allowed, "flat": flat,
                "samples": [(round(t, 2), rss, fds) for t, rss, fds in sampler.samples]},
        "fds": {"idle": idle_fds, "peak": peak_fds, "after": after_fds},
        "cpu_seconds": cpu, "elapsed_s": run["elapsed_s"], "machine_busy_pct": busy,
        "verdict": verdict, "webhookd_summary": hook_summary,
    }, stamp=True)
    if run["exit"] != 0:
        print(common.sipp_failure_details(run))


if __name__ == "__main__":
    main()

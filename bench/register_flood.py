#!/usr/bin/env python3
"""Wrong-password REGISTER flood: SIPp instances at several loopback source addresses send
REGISTERs for an existing user with a wrong password (REGISTER, 401, REGISTER with digest
credentials, 403) at a total rate, while a legitimate phone at another address registers with
the right password at a low rate. Run once with the lock-out at its default (5 failures lock a
source out for 5 minutes: most of the flood then gets 403 without a digest being checked) and
once with `maxAuthFailures = 0` (every REGISTER verified: the worst case). Reports the server's
CPU per rejected REGISTER and the legitimate REGISTERs' failures (target 0).

usage: python3 bench/register_flood.py [--rate 2000] [--duration 30] [--sources 10]"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SCEN = os.path.join(common.ROOT, "bench", "sipp")


def sipp(work, name, scenario, srv, source, rate, calls, password, timeout_s):
    d = tempfile.mkdtemp(prefix=f"{name}-", dir=work)
    args = ["sipp", "-sf", os.path.join(SCEN, scenario), "-s", "alice", f"127.0.0.1:{srv.sip_port}",
            "-i", source, "-p", str(common.free_port()), "-au", "alice", "-ap", password,
            "-r", str(rate), "-m", str(calls), "-l", str(max(rate * 5, 10)), "-trace_stat", "-fd", "1",
            "-trace_err", "-nostdin", "-timeout", f"{int(timeout_s)}s"]
    return subprocess.Popen(args, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), d


def counts(d):
    files = glob.glob(os.path.join(d, "*_.csv"))
    if not files:
        return None, None
    lines = open(files[0]).read().strip().splitlines()
    col = {h: i for i, h in enumerate(lines[0].split(";"))}
    last = lines[-1].split(";")
    return int(last[col["SuccessfulCall(C)"]]), int(last[col["FailedCall(C)"]])


def run(work, max_failures, rate, duration, sources):
    srv = common.Server("""
[[tenants]]
name = "bench"
customerNumber = 1

[[sipUsers]]
tenant = "bench"
username = "alice"
password = "right-password"
""", extra_server=f"maxAuthFailures = {max_failures}\n")
    try:
        time.sleep(1)
        cpu0 = srv.cpu_seconds()
        t0 = time.time()
        per = rate // sources
        flood = [sipp(work, f"flood{i}", "register_wrong.xml", srv, f"127.0.0.{10 + i}", per, per * duration,
                      "wrong-password", duration + 30) for i in range(sources)]
        legit_rate = 10
        legit = sipp(work, "legit", "register_ok.xml", srv, "127.0.0.200", legit_rate, legit_rate * duration,
                     "right-password", duration + 30)
        for p, _ in flood + [legit]:
            p.wait()
        elapsed = time.time() - t0
        cpu = srv.cpu_seconds() - cpu0
        rejected = 0
        flood_failed = 0
        for _, d in flood:
            ok, bad = counts(d)
            rejected += ok or 0
            flood_failed += bad or 0
        legit_ok, legit_failed = counts(legit[1])
        return {"max_auth_failures": max_failures, "rate": rate, "duration_s": duration, "sources": sources,
                "rejected": rejected, "flood_unexpected": flood_failed, "elapsed_s": elapsed,
                "cpu_seconds": cpu, "cpu_us_per_rejected": 1e6 * cpu / rejected if rejected else None,
                "legit_ok": legit_ok, "legit_failed": legit_failed}
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--sources", type=int, default=10)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    work = tempfile.mkdtemp(prefix="callplane-regflood-")
    results = [run(work, mf, a.rate, a.duration, a.sources) for mf in (5, 0)]
    rows = []
    for r in results:
        mode = "lock-out after 5" if r["max_auth_failures"] else "no lock-out (every digest checked)"
        rows += [
            (f"[{mode}] rejected REGISTERs", f"{r['rejected']} in {r['elapsed_s']:.1f} s "
                                             f"({r['rejected'] / r['elapsed_s']:.0f}/s; unexpected answers {r['flood_unexpected']})"),
            (f"[{mode}] server CPU", f"{r['cpu_seconds']:.1f} s = {100 * r['cpu_seconds'] / r['elapsed_s']:.0f}% of one core, "
                                     f"{r['cpu_us_per_rejected']:.0f} µs per rejected REGISTER"),
            (f"[{mode}] legitimate REGISTERs ok / failed", f"{r['legit_ok']} / {r['legit_failed']}"),
        ]
    rows.append(common.machine_row())
    common.report("register_flood", rows, {"runs": results}, stamp=True)


if __name__ == "__main__":
    main()

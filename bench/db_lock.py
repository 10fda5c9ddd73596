#!/usr/bin/env python3
"""Call setup while another process holds the database's write lock.

SIPp places calls at a fixed rate (bench/sipp/uac_setup.xml: INVITE, 200, ACK, a 2 s
announcement, the server's BYE) for `--duration` seconds. `--lock-at` seconds in, a second
process opens the database file, takes SQLite's exclusive write lock (BEGIN EXCLUSIVE plus a
write) and holds it `--lock-for` seconds: what a CLI, a backup or a long migration does to the
file. The SIP source is not in trustedNetworks: every INVITE is admitted as a trunk's inbound
address, so the trunk look-up runs per INVITE as on a carrier interconnect.

Reports failed calls and INVITE->200 (from SIPp's microsecond message trace) for the INVITEs
sent while the lock was held and for the rest of the run, that every call left a CDR once the
lock was gone, and how often the server logged the database as busy (the CDR writer waiting).

usage: python3 bench/db_lock.py [--rate 500] [--duration 60] [--lock-at 20] [--lock-for 10]"""

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

LOCKER = r"""
import sqlite3, sys, time
db, hold = sys.argv[1], float(sys.argv[2])
con = sqlite3.connect(db, isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
con.execute("UPDATE tenants SET customer_number = customer_number WHERE name = 'bench'")
print(f"locked {time.time():.6f}", flush=True)
time.sleep(hold)
con.execute("COMMIT")
print(f"unlocked {time.time():.6f}", flush=True)
"""


def summary(ms):
    if not ms:
        return "no samples"
    return (f"p50 {common.percentile(ms, 50):.2f} / p99 {common.percentile(ms, 99):.2f} / "
            f"max {max(ms):.2f} ms ({len(ms)} calls)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--lock-at", type=float, default=20)
    ap.add_argument("--lock-for", type=float, default=10)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    total = a.rate * a.duration
    work = tempfile.mkdtemp(prefix="callplane-dblock-")
    prompt = os.path.join(work, "two-seconds.wav")
    common.write_tone_wav(prompt, 2.0)
    provisioning = common.answer_play_hangup(prompt) + """
[[trunks]]
tenant = "bench"
name = "carrier"
host = "127.0.0.1"
inboundAddresses = ["127.0.0.1"]
"""
    srv = common.Server(provisioning, trusted=())
    try:
        time.sleep(2)
        db = os.path.join(srv.dir, "data", "callplane.db")
        cpu0 = srv.cpu_seconds()
        result = {}
        sipp = threading.Thread(target=lambda: result.update(common.run_sipp_setup(
            work, srv, 100, a.rate, total, a.duration + 90)))
        t0 = time.time()
        sipp.start()
        time.sleep(a.lock_at)
        locker = subprocess.run([sys.executable, "-c", LOCKER, db, str(a.lock_for)],
                                capture_output=True, text=True, timeout=a.lock_for + 60)
        marks = dict(line.split() for line in locker.stdout.split("\n") if line.strip())
        locked, unlocked = float(marks["locked"]), float(marks["unlocked"])
        sipp.join()
        elapsed = time.time() - t0
        cpu = srv.cpu_seconds() - cpu0

        import glob
        samples = []
        for f in glob.glob(os.path.join(result["dir"], "*_shortmessages.log")):
            samples += common.invite_to_200_timed(f)
        during = [ms for t, ms in samples if locked <= t <= unlocked]
        outside = [ms for t, ms in samples if not locked <= t <= unlocked]
        deadline = time.time() + 60
        cdrs = 0
        while time.time() < deadline:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            cdrs = con.execute("select count(*) from cdrs").fetchone()[0]
            con.close()
            if cdrs >= total:
                break
            time.sleep(0.5)
        log = open(os.path.join(srv.dir, "callplane.log"), errors="replace").read()
        busy = log.count("database busy")
        rows = [
            ("load", f"{a.rate} calls/s for {a.duration} s ({total} calls), SIP source admitted as a trunk address"),
            ("write lock", f"held by another process {unlocked - locked:.1f} s, from {locked - t0:.1f} s into the run"),
            ("successful / failed calls", f"{result.get('successful')} / {result.get('failed')}"),
            ("retransmissions", str(result.get("retransmissions"))),
            ("INVITE->200 while locked", summary(during)),
            ("INVITE->200 otherwise", summary(outside)),
            ("CDRs written (after the lock)", f"{cdrs} of {total}"),
            ("'database busy' log lines", str(busy)),
            ("server CPU", f"{cpu:.1f} s over {elapsed:.1f} s"),
            ("sipp exit", str(result.get("exit"))),
        ]
        common.report("db_lock", rows, {
            "rate": a.rate, "duration_s": a.duration, "calls": total,
            "lock_s": unlocked - locked, "lock_at_s": locked - t0,
            "successful": result.get("successful"), "failed": result.get("failed"),
            "retransmissions": result.get("retransmissions"),
            "invite_to_200_ms_locked": {"p50": common.percentile(during, 50), "p99": common.percentile(during, 99),
                                        "max": max(during) if during else None, "samples": len(during)},
            "invite_to_200_ms_otherwise": {"p50": common.percentile(outside, 50), "p99": common.percentile(outside, 99),
                                           "max": max(outside) if outside else None, "samples": len(outside)},
            "cdrs": cdrs, "busy_log_lines": busy, "cpu_seconds": cpu, "sipp_exit": result.get("exit"),
        })
        if result.get("exit") != 0:
            print(common.sipp_failure_details(result))
    finally:
        srv.stop()


if __name__ == "__main__":
    main()

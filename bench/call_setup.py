#!/usr/bin/env python3
"""Call-setup benchmark: SIPp places calls at a fixed rate to a plan that answers, plays 2 s and
hangs up. Reports failed calls, INVITE->200 latency percentiles (SIPp response-time trace),
the server's CPU and memory, and checks a CDR exists for every call.

usage: python3 bench/call_setup.py [--rate 500] [--duration 60]"""

import argparse
import glob
import os
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    total = a.rate * a.duration
    work = None
    srv = None
    try:
        import tempfile
        work = tempfile.mkdtemp(prefix="callplane-setup-")
        prompt = os.path.join(work, "two-seconds.wav")
        common.write_tone_wav(prompt, 2.0)
        srv = common.Server(common.answer_play_hangup(prompt))
        time.sleep(2)
        idle_rss = srv.rss_bytes()
        cpu0 = srv.cpu_seconds()
        sampler = common.Sampler(srv)
        sampler.start()
        scenario = os.path.join(common.ROOT, "bench", "sipp", "uac_setup.xml")
        t0 = time.time()
        sipp = subprocess.run(
            ["sipp", "-sf", scenario, "-s", "100", f"127.0.0.1:{srv.sip_port}", "-i", "127.0.0.1",
             "-p", str(common.free_port()), "-mp", str(common.free_port()),
             "-r", str(a.rate), "-rp", "1000", "-m", str(total), "-l", str(a.rate * 10),
             "-max_socket", "10000", "-trace_rtt", "-rtt_freq", "100", "-trace_stat", "-fd", "1",
             "-trace_err", "-nostdin", "-timeout", str(a.duration + 60) + "s"],
            cwd=work, capture_output=True, text=True)
        elapsed = time.time() - t0
        cpu = srv.cpu_seconds() - cpu0
        sampler.stop_flag.set()
        sampler.join()
        peak_rss = max((r for _, r in sampler.samples), default=0)

        stat_files = glob.glob(os.path.join(work, "*_.csv")) + glob.glob(os.path.join(work, "*stat*.csv"))
        rtt_files = glob.glob(os.path.join(work, "*_rtt.csv"))
        success = failed = None
        if stat_files:
            lines = open(stat_files[0]).read().strip().splitlines()
            head = lines[0].split(";")
            last = lines[-1].split(";")
            col = {h: i for i, h in enumerate(head)}
            success = int(last[col["SuccessfulCall(C)"]])
            failed = int(last[col["FailedCall(C)"]])
        rtts = []
        for f in rtt_files:
            for line in open(f).read().splitlines()[1:]:
                parts = line.split(";")
                if len(parts) >= 2:
                    try:
                        rtts.append(float(parts[1]))
                    except ValueError:
                        pass
        # Every finished call must have left a CDR.
        deadline = time.time() + 30
        cdrs = 0
        db = os.path.join(srv.dir, "data", "callplane.db")
        while time.time() < deadline:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            cdrs = con.execute("select count(*) from cdrs").fetchone()[0]
            con.close()
            if cdrs >= total:
                break
            time.sleep(0.5)
        rows = [
            ("load", f"{a.rate} calls/s for {a.duration} s ({total} calls, 2 s announcement each)"),
            ("successful calls", str(success)),
            ("failed calls", str(failed)),
            ("INVITE->200 p50 / p99 / max", f"{common.percentile(rtts, 50):.2f} / {common.percentile(rtts, 99):.2f} / {max(rtts) if rtts else float('nan'):.2f} ms ({len(rtts)} samples)"),
            ("CDRs written", str(cdrs)),
            ("server CPU", f"{cpu:.1f} s over {elapsed:.1f} s = {100 * cpu / elapsed:.0f}% of one core"),
            ("idle RSS", f"{idle_rss / 1e6:.1f} MB"),
            ("peak RSS under load", f"{peak_rss / 1e6:.1f} MB"),
            ("sipp exit", str(sipp.returncode)),
        ]
        common.report("call_setup", rows, {
            "rate": a.rate, "duration_s": a.duration, "calls": total, "successful": success, "failed": failed,
            "invite_to_200_ms": {"p50": common.percentile(rtts, 50), "p99": common.percentile(rtts, 99),
                                 "max": max(rtts) if rtts else None, "samples": len(rtts)},
            "cdrs": cdrs, "cpu_seconds": cpu, "elapsed_s": elapsed,
            "idle_rss_bytes": idle_rss, "peak_rss_bytes": peak_rss, "sipp_exit": sipp.returncode,
        })
        if sipp.returncode != 0:
            print(sipp.stdout[-3000:], sipp.stderr[-3000:])
            errs = glob.glob(os.path.join(work, "*_errors.log"))
            if errs:
                print(open(errs[0]).read()[-3000:])
    finally:
        if srv:
            srv.stop()


if __name__ == "__main__":
    main()

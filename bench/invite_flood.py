#!/usr/bin/env python3
"""INVITE flood to an unknown number: a flooder sends INVITEs over UDP from many loopback
source addresses (127.0.0.10 upwards, one socket each) at a total rate, each with a fresh
Call-ID; it never retransmits and, unless `--ack`, never ACKs an answer (the worst case: the
server keeps each transaction and retransmits its answer until Timer H, 32 s). Meanwhile SIPp places legitimate calls from 127.0.0.200 at a low rate to a number
that answers, plays 1 s and hangs up. The server's RSS is sampled from /proc throughout; after
each flood the bench waits `--settle` seconds and reads RSS again.

Reports, per flood: INVITEs sent and how they were answered (404, 503, none: dropped by the
failed-INVITE limit), peak RSS growth over the start, RSS `--settle` s after the flood (target:
within 20 MB of the start), the server's CPU; the legitimate calls' failures (target 0) and
INVITE->200 p99; and the CDRs written for the flood's rejected calls.

usage: python3 bench/invite_flood.py [--rate 2000] [--duration 60] [--sources 100]
                                     [--floods 1] [--settle 30] [--legit-rate 50]"""

import argparse
import glob
import os
import selectors
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MB = 1024 * 1024


def invite(src, port, dst_port, n, tag):
    call_id = f"flood-{tag}-{n}@{src}"
    body = ("v=0\r\no=flood 1 1 IN IP4 {0}\r\ns=-\r\nc=IN IP4 {0}\r\nt=0 0\r\n"
            "m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n").format(src)
    head = (f"INVITE sip:4999000{n % 1000}@127.0.0.1:{dst_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src}:{port};branch=z9hG4bK-{tag}-{n};rport\r\n"
            f"From: <sip:scanner@{src}>;tag=f{n}\r\n"
            f"To: <sip:4999000{n % 1000}@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:scanner@{src}:{port}>\r\n"
            "Max-Forwards: 70\r\nUser-Agent: friendly-scanner\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return (head + body).encode()


def ack_for(resp, dst_port):
    """The ACK for a non-2xx final answer: same branch (the answer's Via), the answer's To."""
    lines = resp.split("\r\n")
    hdr = {}
    for ln in lines[1:]:
        if not ln:
            break
        k, _, v = ln.partition(":")
        hdr.setdefault(k.strip().lower(), v.strip())
    uri = f"sip:flood@127.0.0.1:{dst_port}"
    return (f"ACK {uri} SIP/2.0\r\nVia: {hdr.get('via', '')}\r\nFrom: {hdr.get('from', '')}\r\n"
            f"To: {hdr.get('to', '')}\r\nCall-ID: {hdr.get('call-id', '')}\r\nCSeq: 1 ACK\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def flood(srv, rate, duration, sources, tag, ack):
    """Sends `rate` INVITEs a second for `duration` s from `sources` addresses. Returns counts."""
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((f"127.0.0.{10 + i}", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    dst = ("127.0.0.1", srv.sip_port)
    answers = {}
    sent = 0
    answered = set()
    t0 = time.time()
    end = t0 + duration
    while True:
        now = time.time()
        due = min(int((now - t0) * rate), rate * duration)
        while sent < due:
            s = socks[sent % sources]
            src, port = s.getsockname()
            try:
                s.sendto(invite(src, port, srv.sip_port, sent, tag), dst)
            except BlockingIOError:
                pass
            sent += 1
        if now >= end + 2:
            break
        for key, _ in sel.select(timeout=0.002):
            s = key.fileobj
            while True:
                try:
                    data, _ = s.recvfrom(65535)
                except BlockingIOError:
                    break
                text = data.decode(errors="replace")
                parts = text.split(" ", 2)
                if len(parts) < 2 or not parts[0].startswith("SIP/2.0"):
                    continue
                code = int(parts[1])
                if code < 200:
                    continue
                cid = next((ln.split(":", 1)[1].strip() for ln in text.split("\r\n")
                            if ln.lower().startswith("call-id:")), "")
                if cid in answered:
                    continue  # a retransmitted final answer (our ACK was lost)
                answered.add(cid)
                answers[code] = answers.get(code, 0) + 1
                if code >= 300 and ack:
                    try:
                        s.sendto(ack_for(text, srv.sip_port), dst)
                    except BlockingIOError:
                        pass
    for s in socks:
        s.close()
    return {"sent": sent, "answers": answers, "unanswered": sent - len(answered),
            "elapsed_s": time.time() - t0}


def legit_sipp(work, srv, rate, duration):
    scenario = os.path.join(common.ROOT, "bench", "sipp", "uac_setup.xml")
    d = tempfile.mkdtemp(prefix="legit-", dir=work)
    p = subprocess.Popen(
        ["sipp", "-sf", scenario, "-s", "100", f"127.0.0.1:{srv.sip_port}", "-i", "127.0.0.200",
         "-p", str(common.free_port()), "-mp", str(common.free_port()),
         "-r", str(rate), "-m", str(rate * duration), "-l", str(rate * 10),
         "-trace_rtt", "-rtt_freq", "10", "-trace_stat", "-fd", "1", "-trace_err", "-nostdin",
         "-timeout", f"{duration + 60}s"],
        cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p, d


def legit_results(d):
    ok = failed = None
    files = glob.glob(os.path.join(d, "*_.csv"))
    if files:
        lines = open(files[0]).read().strip().splitlines()
        col = {h: i for i, h in enumerate(lines[0].split(";"))}
        last = lines[-1].split(";")
        ok, failed = int(last[col["SuccessfulCall(C)"]]), int(last[col["FailedCall(C)"]])
    rtts = []
    for f in glob.glob(os.path.join(d, "*_rtt.csv")):
        for line in open(f).read().splitlines()[1:]:
            parts = line.split(";")
            try:
                rtts.append(float(parts[1]))
            except (IndexError, ValueError):
                pass
    return ok, failed, rtts


def cdr_count(srv, like):
    db = sqlite3.connect(os.path.join(srv.dir, "data", "callplane.db"), timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM cdrs WHERE sip_call_id LIKE ?", (like,)).fetchone()[0]
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--sources", type=int, default=100)
    ap.add_argument("--floods", type=int, default=1)
    ap.add_argument("--settle", type=int, default=30)
    ap.add_argument("--legit-rate", type=int, default=50)
    ap.add_argument("--ack", action="store_true",
                    help="ACK final answers (by default the flooder never does, so the server "
                         "retransmits each answer until Timer H, as against sipvicious)")
    ap.add_argument("--extra-server", default="", help="more [server] lines, e.g. 'failedInviteLimit = 0'")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        common.build()
    work = tempfile.mkdtemp(prefix="callplane-inviteflood-")
    prompt = os.path.join(work, "two-seconds.wav")
    common.write_tone_wav(prompt, 1.0)
    srv = common.Server(common.answer_play_hangup(prompt), extra_server=a.extra_server)
    runs = []
    try:
        time.sleep(2)
        idle_rss = srv.rss_bytes()
        sampler = common.Sampler(srv)
        sampler.start()
        cpu0 = srv.cpu_seconds()
        # The start is taken with the legitimate calls already running: what is measured is
        # what the flood adds.
        legit = legit_sipp(work, srv, a.legit_rate, a.floods * (a.duration + a.settle) + 10)
        time.sleep(10)
        start_rss = srv.rss_bytes()
        for i in range(a.floods):
            t_start = time.time()
            f = flood(srv, a.rate, a.duration, a.sources, f"{i}", a.ack)
            t_end = time.time()
            time.sleep(a.settle)
            settled = srv.rss_bytes()
            peak = max((r for t, r in sampler.samples if t_start <= t <= t_end + 1), default=0)
            after = [(round(t - t_end, 1), r) for t, r in sampler.samples if t > t_end]
            f.update(peak_rss=peak, settled_rss=settled, rss_after=after[::5])
            runs.append(f)
        legit[0].wait()
        cpu = srv.cpu_seconds() - cpu0
        sampler.stop_flag.set()
        sampler.join()
        ok, failed, rtts = legit_results(legit[1])
        time.sleep(1)
        cdrs = cdr_count(srv, "flood-%")
        metrics = {}
        try:
            metrics = srv.metrics()
        except OSError:
            pass
    finally:
        srv.stop()
    rows = [("RSS idle / start (legitimate calls running)", f"{idle_rss / MB:.1f} / {start_rss / MB:.1f} MB")]
    for i, r in enumerate(runs):
        ans = ", ".join(f"{k}: {v}" for k, v in sorted(r["answers"].items()))
        rows += [
            (f"[flood {i + 1}] INVITEs sent", f"{r['sent']} in {a.duration} s from {a.sources} sources "
                                              f"({r['sent'] / a.duration:.0f}/s)"),
            (f"[flood {i + 1}] answered", f"{ans}; unanswered (dropped) {r['unanswered']}"),
            (f"[flood {i + 1}] peak RSS", f"{r['peak_rss'] / MB:.1f} MB (+{(r['peak_rss'] - start_rss) / MB:.1f} MB)"),
            (f"[flood {i + 1}] RSS {a.settle} s after", f"{r['settled_rss'] / MB:.1f} MB "
                                                         f"({(r['settled_rss'] - start_rss) / MB:+.1f} MB over the start)"),
        ]
    answered_total = sum(sum(r["answers"].values()) for r in runs)
    rows += [
        ("server CPU (whole run)", f"{cpu:.1f} s"),
        ("CDRs of flood calls", f"{cdrs} (flood INVITEs answered: {answered_total})"),
        ("legitimate calls ok / failed", f"{ok} / {failed} at {a.legit_rate}/s"),
        ("legitimate INVITE->200 p50 / p99", f"{common.percentile(rtts, 50):.2f} / {common.percentile(rtts, 99):.2f} ms"),
        ("failed-INVITE drops (metric)", f"{metrics.get('callplane_sip_failed_invites_dropped_total', 'n/a')}"),
        common.machine_row(),
    ]
    common.report("invite_flood", rows, {"rate": a.rate, "duration_s": a.duration, "sources": a.sources,
                                          "settle_s": a.settle, "idle_rss": idle_rss, "start_rss": start_rss, "floods": runs,
                                          "extra_server": a.extra_server, "ack": a.ack,
                                          "legit": {"rate": a.legit_rate, "ok": ok, "failed": failed,
                                                    "p50_ms": common.percentile(rtts, 50),
                                                    "p99_ms": common.percentile(rtts, 99)},
                                          "flood_cdrs": cdrs, "cpu_seconds": cpu}, stamp=True)


if __name__ == "__main__":
    main()

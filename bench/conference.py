#!/usr/bin/env python3
"""Conference benchmark: R rooms of M members each, mixed by Callplane on its 20 ms clock.

Number 3000 + r routes to a plan `[CONFERENCE conferenceName=room<r>]`. SIPp places R x M calls
(signalling only, bench/sipp/uac_conference.xml) whose SDPs point at sockets of bench/rtpconf.
Once a socket has heard from Callplane, a speaking member (the first S of each room, or all)
sends 20 ms PCMU of its own tone; every socket counts what Callplane sends it. Once all members
receive their room's stream, a window of --duration seconds is measured:

  added loss           a member of a mixing room gets one packet every 20 ms whoever speaks
                       (its mix, or comfort silence): packets each member received in the window
                       vs 50/s (one packet of slack at each edge), RTP sequence gaps, and the
                       speakers' frames Callplane dropped before mixing (its room queue full or
                       its jitter queue trimmed, from /metrics)
  heard                twice a second per member the tool decodes its mix and measures each
                       speaker's tone: every other speaker of the room is in it, its own is not
  mixer tick           callplane_room_tick_seconds over the window (buckets scraped before and
                       after and differenced): p50 / p99 (bucket estimate) and the bucket of the
                       longest; ticks run vs R x 50/s
  CPU per member       Callplane utime+stime over the window / window / (R x M), % of one core
  memory per member    (mean RSS in the window - idle RSS before any call) / (R x M)

plus kernel UDP drops at Callplane's and the tool's sockets and what else used the machine.
The tool runs at nice -5 (as rtpload does) so that Callplane meets the full offered load on time.

usage: python3 bench/conference.py [--rooms 100] [--members 5] [--speaking all|N] [--duration 60]"""

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import media_bridge as mb  # noqa: E402

RTPCONF = os.path.join(common.ROOT, "target", "release", "rtpconf")
SIPP_DIR = os.path.join(common.ROOT, "bench", "sipp")
NUMBER_BASE = 3000
AIM_TICK_P99_S = 0.002
_LE = re.compile(r'^callplane_room_tick_seconds_bucket\{le="([^"]+)"\}$')


def build():
    # --locked: the benchmark measures the tree as committed, with the lock file's versions.
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "callplane", "-p", "rtpload"],
                   cwd=common.ROOT, check=True)


def provisioning(rooms, members):
    out = ['[[tenants]]\nname = "bench"\ncustomerNumber = 1\n']
    cap = max(50, members)
    for r in range(rooms):
        out.append(f"""
[[numbers]]
number = "{NUMBER_BASE + r}"
tenant = "bench"
routingPlan = "conf{r}"

[[routingPlans]]
tenant = "bench"
name = "conf{r}"
blocks = [
  {{ blockType = "CONFERENCE", conferenceName = "room{r}", maxParticipants = {cap} }},
]
""")
    return "".join(out)


class RtpConf:
    """bench/rtpconf: control lines in, status and replies out."""

    def __init__(self, work, rooms, members, speaking):
        self.csv = os.path.join(work, "members.csv")
        self.result = os.path.join(work, "rtpconf.json")

        def raise_priority():
            try:
                os.nice(-5)
            except OSError:
                pass

        self.proc = subprocess.Popen(
            [RTPCONF, "--rooms", str(rooms), "--members", str(members), "--speaking", str(speaking),
             "--number-base", str(NUMBER_BASE), "--csv", self.csv, "--result", self.result],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(os.path.join(work, "rtpconf.err"), "w"),
            text=True, bufsize=1, preexec_fn=raise_priority)
        self.status = {}
        self.replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("ready", 60)
        with open(f"/proc/{self.proc.pid}/stat") as f:
            self.nice = int(f.read().rsplit(")", 1)[1].split()[16])

    def _read(self):
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "status":
                self.status = {k: float(v) for k, v in (kv.split("=") for kv in rest.split())}
            else:
                self.replies.put((word, rest))

    def expect(self, word, timeout):
        try:
            got, rest = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"rtpconf did not answer {word!r} within {timeout} s")
        if got != word:
            raise RuntimeError(f"rtpconf answered {got} {rest} instead of {word!r}")
        return rest

    def command(self, cmd, reply, timeout=30):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.expect(reply, timeout)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


def metrics(srv):
    """/metrics as {series: value}. Lines are stripped first: a HELP/TYPE comment indented by
    mistake must not stop the benchmark (common.Server.metrics parses strictly)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def snapshot(srv, pids):
    return {
        "t": time.time(),
        "cpu": {name: mb.proc_cpu(pid) for name, pid in pids.items()},
        "callplane_user_sys": mb.proc_user_sys(pids["callplane"]),
        "driver_cpu": sum(os.times()[:2]),
        "all_cpu": mb.all_proc_cpu(),
        "metrics": metrics(srv),
        "snmp": mb.udp_snmp(),
    }


def tick_buckets(metrics):
    """[(le seconds, cumulative ticks)] of callplane_room_tick_seconds, ascending."""
    out = []
    for k, v in metrics.items():
        m = _LE.match(k)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            out.append((le, int(v)))
    return sorted(out)


def tick_summary(before, after):
    """The window's ticks: count, mean, p50 / p99 estimates, share within the p99 aim and the
    bucket the longest fell in."""
    a, b = dict(tick_buckets(before)), tick_buckets(after)
    diff = [(le, n - a.get(le, 0)) for le, n in b]
    count = diff[-1][1] if diff else 0
    total = after.get("callplane_room_tick_seconds_sum", 0) - before.get("callplane_room_tick_seconds_sum", 0)
    out = {"count": count, "mean_ms": 1000 * total / count if count else float("nan"), "buckets": diff}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        est, lo, hi = common.histogram_quantile(diff, q)
        out[name + "_ms"] = 1000 * est
        out[name + "_bucket_ms"] = [1000 * lo, 1000 * hi]
    within = dict(diff).get(AIM_TICK_P99_S, 0)
    out["share_within_aim"] = within / count if count else float("nan")
    prev_n, prev_le, top = 0, 0.0, None
    for le, n in diff:
        if n > prev_n:
            top = (prev_le, le)
        prev_n, prev_le = n, le
    out["max_bucket_ms"] = [1000 * top[0], 1000 * top[1]] if top else None
    return out


def fmt_ms(x):
    return "inf" if x == float("inf") else f"{x:g}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--speaking", default="all", help="speaking members per room: all, or a number")
    ap.add_argument("--duration", type=int, default=60, help="measurement window, s")
    ap.add_argument("--rate", type=int, default=50, help="calls per second while joining")
    ap.add_argument("--settle", type=int, default=20, help="max s after the joins for every member's stream to flow")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    speaking = a.members if a.speaking == "all" else min(int(a.speaking), a.members)
    if not a.no_build:
        build()
    rooms, members = a.rooms, a.members
    n = rooms * members
    ramp = n / a.rate
    quiet = 3  # s after everyone flows: the last enter beeps end, the rooms are steady
    hold_s = ramp + a.settle + quiet + a.duration + 15
    work = tempfile.mkdtemp(prefix="callplane-conference-")
    srv = load = uac = None
    try:
        srv = common.Server(provisioning(rooms, members))
        time.sleep(2)
        idle_rss = srv.rss_bytes()
        load = RtpConf(work, rooms, members, speaking)
        timeout = f"{int(hold_s + ramp + 120)}s"
        t_calls = time.time()
        uac = subprocess.Popen(
            ["sipp", "-sf", os.path.join(SIPP_DIR, "uac_conference.xml"), "-inf", load.csv,
             f"127.0.0.1:{srv.sip_port}", "-i", "127.0.0.1", "-p", str(common.free_port()),
             "-mp", str(common.free_port()), "-r", str(a.rate), "-rp", "1000", "-l", str(n), "-m", str(n),
             "-d", str(int(hold_s * 1000)), "-max_socket", "10000", "-trace_stat", "-fd", "1", "-trace_err",
             "-nostdin", "-timeout", timeout],
            cwd=work, stdout=open(os.path.join(work, "uac.out"), "w"), stderr=subprocess.STDOUT)
        pids = {"callplane": srv.proc.pid, "rtpconf": load.proc.pid, "sipp": uac.pid}

        # Joins: wait (bounded) until every member receives its room's stream and Callplane
        # counts every leg in a room.
        deadline = t_calls + ramp + a.settle
        m = {}
        while time.time() < deadline:
            for name, p in (("callplane", srv.proc), ("rtpconf", load.proc), ("SIPp", uac)):
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} while members joined; see {work}")
            m = metrics(srv)
            if load.status.get("flowing") == n and m.get("callplane_room_members") == n:
                break
            time.sleep(0.2)
        joined_s = time.time() - t_calls
        at_start = dict(load.status)
        if at_start.get("flowing") != n or m.get("callplane_room_members") != n:
            print(f"warning: {joined_s:.0f} s after the first call, {at_start.get('flowing')} of {n} members "
                  f"receive and Callplane has {m.get('callplane_room_members')} in rooms; measuring anyway",
                  file=sys.stderr)
        time.sleep(quiet)

        # The window.
        drops_a = mb.udp_drops({"callplane": srv.proc.pid, "rtpconf": load.proc.pid})
        snap_a = snapshot(srv, pids)
        load.command("start", "started")
        rss, flowing_min, members_min, rooms_seen = [], n, n, set()
        end = snap_a["t"] + a.duration
        while time.time() < end:
            for name, p in (("callplane", srv.proc), ("rtpconf", load.proc), ("SIPp", uac)):
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode} during the window; see {work}")
            rss.append(srv.rss_bytes())
            flowing_min = min(flowing_min, int(load.status.get("flowing", 0)))
            mm = metrics(srv)
            members_min = min(members_min, int(mm.get("callplane_room_members", 0)))
            rooms_seen.add(int(mm.get("callplane_rooms", 0)))
            time.sleep(min(1.0, max(0.0, end - time.time())))
        load.command("end", "ended")
        snap_b = snapshot(srv, pids)
        rss.append(srv.rss_bytes())
        load.command("report", "reported")
        drops_c = mb.udp_drops({"callplane": srv.proc.pid, "rtpconf": load.proc.pid})
        snmp_c = mb.udp_snmp()
        media = json.load(open(load.result))

        # Teardown: every member hangs up (BYE); the rooms must be gone afterwards.
        try:
            uac.wait(timeout=hold_s + ramp + 60)
        except subprocess.TimeoutExpired:
            uac.kill()
            uac.wait(5)
        after = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            after = metrics(srv)
            if (after.get("callplane_calls_active") == 0 and after.get("callplane_rooms") == 0
                    and after.get("callplane_room_members") == 0):
                break
            time.sleep(0.5)
        time.sleep(1)
        rss_after = srv.rss_bytes()
        sipp = mb.sipp_stats(work, "uac_conference")

        # Figures.
        win = snap_b["t"] - snap_a["t"]
        cpu = {k: snap_b["cpu"][k] - snap_a["cpu"][k] for k in pids}
        core_pct = {k: 100 * v / win for k, v in cpu.items()}
        cpu_per_member = core_pct["callplane"] / n
        cp_user = snap_b["callplane_user_sys"][0] - snap_a["callplane_user_sys"][0]
        cp_sys = snap_b["callplane_user_sys"][1] - snap_a["callplane_user_sys"][1]
        ours = set(pids.values()) | {os.getpid()}
        others = {}
        for pid, (name, c) in snap_b["all_cpu"].items():
            if pid in snap_a["all_cpu"] and pid not in ours:
                dc = c - snap_a["all_cpu"][pid][1]
                if dc > 0:
                    others[name] = others.get(name, 0) + dc
        others_pct = 100 * sum(others.values()) / win
        driver_pct = 100 * (snap_b["driver_cpu"] - snap_a["driver_cpu"]) / win
        machine_busy_pct = (sum(core_pct.values()) + others_pct + driver_pct) / os.cpu_count()
        top_others = sorted(others.items(), key=lambda kv: -kv[1])[:4]
        rss_mean = sum(rss) / len(rss)
        rss_per_member = (rss_mean - idle_rss) / n
        ma, mb_ = snap_a["metrics"], snap_b["metrics"]

        def mdelta(name):
            return mb_.get(name, 0) - ma.get(name, 0)

        ticks = tick_summary(ma, mb_)
        drop_queue = mdelta('callplane_room_frames_dropped_total{reason="queue_full"}')
        drop_jitter = mdelta('callplane_room_frames_dropped_total{reason="jitter_trim"}')
        send_errors = mdelta("callplane_room_send_errors_total")
        mixed_sent = mdelta("callplane_room_mixed_frames_sent_total")
        ticks_expected = rooms * 50 * win
        snmp_d = {k: snmp_c[k] - snap_a["snmp"][k] for k in ("InErrors", "RcvbufErrors", "SndbufErrors")}
        drops = {k: drops_c[k] - drops_a[k] for k in drops_a}
        out_short = media["shortfall_packets"]
        added_loss = out_short + media["seq_gaps"] + drop_queue + drop_jitter
        problems = []
        if members_min < n:
            problems.append(f"callplane_room_members fell to {members_min}")
        if at_start.get("flowing", 0) < n:
            problems.append(f"only {at_start.get('flowing', 0):.0f} of {n} members received when the window opened")
        if rooms_seen != {rooms}:
            problems.append(f"callplane_rooms was {sorted(rooms_seen)} in the window, not {rooms}")
        valid = not problems
        late_share = media["sender"]["window_slots_late_5ms"] / max(1, media["sender"]["window_slots"])
        saturated = machine_busy_pct > 90 or late_share > 0.01
        tick_met = ticks["share_within_aim"] >= 0.99

        def verdict(ok):
            return ("MET" if ok else "MISSED") if valid else "NOT MEASURED (run invalid)"

        exp = media["expected_per_member"]
        aud = media["audibility"]
        mix_ok = aud["members_missing_a_speaker"] == 0 and aud["self_heard"] == 0 and media["over_members"] == 0
        rows = [
            ("measurement valid", "yes" if valid else "NO: " + "; ".join(problems)),
            ("machine saturated", (f"YES: machine {machine_busy_pct:.0f} % busy, rtpconf sender > 5 ms late in "
                                   f"{100 * late_share:.1f} % of its 1 ms slots") if saturated else
                                  f"no ({machine_busy_pct:.0f} % busy, sender late in {100 * late_share:.2f} % of slots)"),
            ("machine", f"{os.cpu_count()} cores ({common.cpu_model()}), Linux {os.uname().release}; Callplane, "
                        "rtpconf, SIPp and this script all share it"),
            ("load", f"{rooms} room(s) x {members} members = {n} legs, {speaking} speaking per room "
                     f"({speaking * rooms} RTP streams in, PCMU 20 ms), {n} mixed streams out; joins at {a.rate}/s"),
            ("window", f"{win:.1f} s, opened {joined_s + quiet:.1f} s after the first INVITE"),
            ("calls (SIPp)", f"{sipp['successful']} completed, {sipp['failed']} failed, peak "
                             f"{sipp['peak_concurrent']} concurrent"),
            ("members receiving (1 s) at start / min", f"{at_start.get('flowing', 0):.0f} / {flowing_min} of {n}"),
            ("received per member", f"min {media['received']['min_member']} / max {media['received']['max_member']} "
                                    f"(expected {exp:.1f} = 50/s x window; a member counts short below "
                                    f"{media['allowed_per_member']})"),
            ("members short / packets short", f"{media['short_members']} / {out_short}; received - 50/s x window "
                                              f"over all members: {-media['deficit_vs_expected']:+.1f} packets"),
            ("members over 50/s (a second stream)", f"{media['over_members']}"),
            ("RTP sequence gaps / backwards", f"{media['seq_gaps']} / {media['seq_backwards']}"),
            ("arrival gaps > 30 ms / > 50 ms", f"{media['arrival_gaps_over_30ms']} / {media['arrival_gaps_over_50ms']} "
                                               f"(longest {media['max_arrival_gap_ms']} ms)"),
            ("what members heard", f"{media['received']['audio']} mixed audio / {media['received']['silent']} "
                                   f"silence packets; members with no audio: {media['received']['members_without_audio']}"),
            ("HEARD: others yes, self no", f"{aud['checks']} mixes decoded (2/s per member): a speaker missing in "
                                           f"{aud['speaker_missed']} of {aud['speaker_checks']} speaker checks, own tone "
                                           f"in {aud['self_heard']}; members missing a speaker in > 10 % of their "
                                           f"mixes: {aud['members_missing_a_speaker']} {verdict(mix_ok)}"),
            ("speakers' frames dropped", f"room queue full {drop_queue:.0f}, jitter queue trimmed {drop_jitter:.0f} "
                                         f"(of {media['speakers']['window_sent']} sent by {media['speakers']['streams']} speakers)"),
            ("ADDED LOSS", f"{added_loss:.0f} packets/frames (aim 0) {verdict(added_loss == 0)}"),
            ("kernel drops at sockets", f"Callplane's {drops['callplane']}, rtpconf's {drops['rtpconf']}; system "
                                        f"RcvbufErrors +{snmp_d['RcvbufErrors']}, SndbufErrors +{snmp_d['SndbufErrors']}"),
            ("Callplane /metrics in window", f"RTP received +{mdelta('callplane_rtp_packets_received_total'):.0f}, "
                                             f"sent +{mdelta('callplane_rtp_packets_sent_total'):.0f}, mixed frames "
                                             f"sent +{mixed_sent:.0f} (members x 50/s = {n * 50 * win:.0f}), send "
                                             f"errors +{send_errors:.0f}"),
            ("mixer ticks", f"{ticks['count']} run, {ticks_expected:.0f} due (rooms x 50/s); mean {ticks['mean_ms']:.3f} ms"),
            ("MIXER TICK p50 / p99", f"~{ticks['p50_ms']:.3f} ms (bucket {fmt_ms(ticks['p50_bucket_ms'][0])}-"
                                     f"{fmt_ms(ticks['p50_bucket_ms'][1])}) / ~{ticks['p99_ms']:.3f} ms (bucket "
                                     f"{fmt_ms(ticks['p99_bucket_ms'][0])}-{fmt_ms(ticks['p99_bucket_ms'][1])}); "
                                     f"{100 * ticks['share_within_aim']:.3f} % of ticks <= 2 ms (aim p99 < 2 ms, set for 100 x 5) "
                                     f"{verdict(tick_met)}"),
            ("longest tick", f"in bucket {fmt_ms(ticks['max_bucket_ms'][0])}-{fmt_ms(ticks['max_bucket_ms'][1])} ms"
                             if ticks["max_bucket_ms"] else "no ticks"),
            ("Callplane CPU", f"{cpu['callplane']:.1f} s over {win:.1f} s = {core_pct['callplane']:.1f} % of one core "
                              f"(user {cp_user:.1f} s, kernel {cp_sys:.1f} s)"),
            ("CPU PER MIXED MEMBER", f"{cpu_per_member:.4f} % of one core"),
            ("Callplane RSS", f"idle {idle_rss / 1e6:.1f} MB, window mean {rss_mean / 1e6:.1f} MB, peak "
                              f"{max(rss) / 1e6:.1f} MB, after everyone left {rss_after / 1e6:.1f} MB"),
            ("MEMORY PER MEMBER", f"{rss_per_member / 1000:.1f} kB"),
            ("other CPU (same machine)", f"rtpconf {core_pct['rtpconf']:.1f} % (nice {load.nice}), SIPp "
                                         f"{core_pct['sipp']:.1f} % of one core; other processes {others_pct:.1f} % ("
                                         + ", ".join(f"{k} {100 * v / win:.1f} %" for k, v in top_others)
                                         + f"), this script {driver_pct:.1f} %; machine {machine_busy_pct:.0f} % "
                                         f"busy of {os.cpu_count()} cores"),
            ("rtpconf sender in window", f"max lag {media['sender']['window_max_lag_ms']} ms, "
                                         f"{media['sender']['window_slots_late_5ms']} of "
                                         f"{media['sender']['window_slots']} 1 ms slots > 5 ms late; send errors "
                                         f"{media['send_errors']}"),
            ("after everyone left", f"calls_active {after.get('callplane_calls_active')}, rooms "
                                    f"{after.get('callplane_rooms')}, room members {after.get('callplane_room_members')}, "
                                    f"rtp_legs {after.get('callplane_rtp_legs')}"),
        ]
        common.report("conference", rows, {
            "rooms": rooms, "members_per_room": members, "speaking_per_room": speaking, "members": n,
            "duration_s": a.duration, "rate": a.rate, "window_s": win, "joined_s": joined_s,
            "sipp": sipp, "rtpconf": media,
            "members_receiving": {"at_start": at_start, "min": flowing_min},
            "added_loss": added_loss, "frames_dropped": {"queue_full": drop_queue, "jitter_trim": drop_jitter},
            "room_send_errors": send_errors, "mixed_frames_sent": mixed_sent,
            "ticks": ticks, "ticks_expected": ticks_expected,
            "kernel_socket_drops": drops, "udp_snmp_delta": snmp_d,
            "callplane_metrics": {"window_start": ma, "window_end": mb_, "after_teardown": after},
            "cpu_seconds": cpu, "cpu_pct_of_core": core_pct, "callplane_user_s": cp_user,
            "callplane_system_s": cp_sys, "cpu_per_member_pct_of_core": cpu_per_member,
            "machine_busy_pct": machine_busy_pct, "other_processes_cpu_pct_of_core": others_pct,
            "other_processes_top": dict(top_others), "driver_cpu_pct_of_core": driver_pct,
            "rss_bytes": {"idle": idle_rss, "window_mean": rss_mean, "window_peak": max(rss),
                          "after_teardown": rss_after},
            "rss_per_member_bytes": rss_per_member,
            "valid": valid, "problems": problems, "saturated": saturated,
            "mix_correct": mix_ok,
            "aims": {"added_loss": 0, "tick_p99_s": AIM_TICK_P99_S, "loss_met": valid and added_loss == 0,
                     "tick_met": valid and tick_met},
        }, stamp=True)
        print(f"  (SIPp, rtpconf and callplane logs in {work} and {srv.dir})")
    finally:
        if uac and uac.poll() is None:
            uac.terminate()
            try:
                uac.wait(5)
            except subprocess.TimeoutExpired:
                uac.kill()
        if load:
            load.stop()
        if srv:
            srv.stop()


if __name__ == "__main__":
    main()

"""Shared helpers for Callplane benchmarks: start the release binary on free loopback ports with
a temporary home, sample its CPU and memory from /proc, and write results as a table and JSON."""

import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CALLPLANE_BIN runs another build (A/B against an older commit); default: this tree's release.
BIN = os.environ.get("CALLPLANE_BIN") or os.path.join(ROOT, "target", "release", "callplane")
RESULTS = os.path.join(ROOT, "bench", "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def build():
    subprocess.run(["cargo", "build", "--release", "--bin", "callplane"], cwd=ROOT, check=True)


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            t.close()
            continue
        t.close()
        u.close()
        return port
    raise RuntimeError("no free port")


def write_tone_wav(path, seconds, freq=440.0):
    """An 8 kHz 16-bit mono sine, generated here so nothing large is committed."""
    n = int(8000 * seconds)
    frames = bytearray()
    for i in range(n):
        v = int(8000 * math.sin(2 * math.pi * freq * i / 8000))
        frames += v.to_bytes(2, "little", signed=True)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(frames))


def answer_play_hangup(prompt):
    """Provisioning TOML: tenant `bench`, number 100 whose plan plays the WAV `prompt` and
    hangs up."""
    return f"""
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
"""


def bench_api_key(key):
    """Provisioning TOML: the admin API key `bench` a load client uses (no rate limit: the
    whole load comes from that one key)."""
    return f"""
[[apiKeys]]
name = "bench"
realm = "admin"
rateLimit = 0
key = "{key}"
"""


class Server:
    """The callplane binary with a config written from `provisioning` (TOML text)."""

    def __init__(self, provisioning, rtp_range=(20000, 40000), extra_server="", nofile=None,
                 trusted=("127.0.0.0/8",)):
        """`extra_server`: more `[server]` lines; `nofile`: the descriptor limit (soft and
        hard) the binary starts with; `trusted`: the trustedNetworks (INVITEs from elsewhere
        need digest auth or a trunk's inbound address)."""
        self.dir = tempfile.mkdtemp(prefix="callplane-bench-")
        self.sip_port = free_port()
        self.http_port = free_port()
        cfg = f"""
[server]
dataDir = "{self.dir}/data"
sipUdp = "127.0.0.1:{self.sip_port}"
sipTcp = "127.0.0.1:{self.sip_port}"
http = "127.0.0.1:{self.http_port}"
rtpIp = "127.0.0.1"
rtpPortMin = {rtp_range[0]}
rtpPortMax = {rtp_range[1]}
trustedNetworks = {json.dumps(list(trusted))}
promptsDir = "{ROOT}/prompts"
{extra_server}
{provisioning}
"""
        self.config = os.path.join(self.dir, "callplane.toml")
        with open(self.config, "w") as f:
            f.write(cfg)
        self.log = open(os.path.join(self.dir, "callplane.log"), "w")
        env = dict(os.environ, CALLPLANE_LOG=os.environ.get("CALLPLANE_LOG", "warn,callplane=info"))
        def limits():
            if nofile:
                import resource
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, preexec_fn=limits)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("callplane exited: " + open(self.log.name).read())
            try:
                socket.create_connection(("127.0.0.1", self.http_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("callplane did not start listening within 20 s")

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
        return int(m.group(1)) * 1024

    def metrics(self):
        import urllib.request
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Sampler(threading.Thread):
    """Samples a server's RSS once a second while a load runs."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.samples = []
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.samples.append((time.time(), self.server.rss_bytes()))
            except OSError:
                return
            self.stop_flag.wait(1.0)


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(math.ceil(p / 100.0 * len(v))) - 1))
    return v[k]


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine():
    return {"cpus": os.cpu_count(), "model": cpu_model(), "machine": platform.machine(),
            "kernel": platform.release()}


def machine_row():
    """The table row naming the machine."""
    return ("machine", f"{os.cpu_count()} cores ({cpu_model()}), Linux {platform.release()}")


def report(name, rows, data, stamp=False):
    """Prints the table and writes the JSON to bench/results/NAME.json, or with `stamp` to
    bench/results/NAME-YYYYmmdd-HHMMSS.json so that runs are kept side by side."""
    os.makedirs(RESULTS, exist_ok=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{name}")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    data = dict(data, benchmark=name, machine=machine(), time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    fname = name + (time.strftime("-%Y%m%d-%H%M%S") if stamp else "") + ".json"
    path = os.path.join(RESULTS, fname)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    print(f"  (written to {os.path.relpath(path, ROOT)})")


# ----- CALL_CONTROL benchmarks: webhookd, SIPp call-setup runs, webhook metrics --------------

WEBHOOKD = os.path.join(ROOT, "target", "release", "webhookd")


def build_package(package):
    subprocess.run(["cargo", "build", "--release", "-p", package], cwd=ROOT, check=True)


def proc_cpu_seconds(pid):
    """utime+stime of a whole process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy():
    """(busy, total) jiffies of all cores from /proc/stat; two readings give how busy the whole
    machine was (the benchmark and everything else running on it)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user .. steal (guest is inside user)
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def busy_pct(before, after):
    db, dt = after[0] - before[0], after[1] - before[1]
    return 100.0 * db / dt if dt else float("nan")


class Webhookd:
    """bench/webhookd, the customer's Call Control server, on a free loopback port."""

    def __init__(self, mode, work, announcement=None):
        args = [WEBHOOKD, "--listen", "127.0.0.1:0", "--mode", mode]
        if announcement:
            args += ["--announcement", announcement]
        self.out_path = os.path.join(work, f"webhookd-{mode}.out")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(self.out_path + ".err", "w"),
                                     text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"webhookd did not start: {line!r} "
                               + open(self.out_path + ".err").read())
        self.addr = line.split()[-1]
        self.url = f"http://{self.addr}/cc"

    def stats(self):
        import urllib.request
        return json.loads(urllib.request.urlopen(f"http://{self.addr}/stats", timeout=5).read())

    def cpu_seconds(self):
        return proc_cpu_seconds(self.proc.pid)

    def stop(self):
        """SIGTERM; returns webhookd's own summary."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out = self.proc.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out = self.proc.communicate()[0]
        with open(self.out_path, "w") as f:
            f.write(out)
        return out.strip()


def run_sipp_setup(work, server, service, rate, calls, timeout_s, limit=None):
    """bench/sipp/uac_setup.xml against `server` at `rate` calls/s for `calls` calls to number
    `service`, in its own directory under `work`. Returns successful / failed calls,
    retransmissions, SIPp's exit code and the wall time; `sipp` (the process result) and `dir`
    for diagnosis; and INVITE->200 samples (ms) twice:

      setup_ms  from SIPp's message trace (-trace_shortmsg), whose timestamps are taken with
                microseconds when SIPp sends the first INVITE and reads the 200
      rtts      SIPp's response-time trace (rtd "setup", as call_setup.py), which counts on a
                coarse clock: whole milliseconds, in steps of the kernel tick (4 ms here)"""
    import glob
    d = tempfile.mkdtemp(prefix=f"sipp-{service}-", dir=work)
    scenario = os.path.join(ROOT, "bench", "sipp", "uac_setup.xml")
    t0 = time.time()
    sipp = subprocess.run(
        ["sipp", "-sf", scenario, "-s", str(service), f"127.0.0.1:{server.sip_port}", "-i", "127.0.0.1",
         "-p", str(free_port()), "-mp", str(free_port()),
         "-r", str(rate), "-rp", "1000", "-m", str(calls), "-l", str(limit or rate * 10),
         "-max_socket", "10000", "-trace_rtt", "-rtt_freq", "100", "-trace_stat", "-fd", "1",
         "-trace_shortmsg", "-trace_err", "-nostdin", "-timeout", f"{int(timeout_s)}s"],
        cwd=d, capture_output=True, text=True)
    elapsed = time.time() - t0
    out = {"successful": None, "failed": None, "retransmissions": None, "rtts": [], "setup_ms": [],
           "exit": sipp.returncode, "elapsed_s": elapsed, "sipp": sipp, "dir": d}
    stat_files = glob.glob(os.path.join(d, "*_.csv"))
    if stat_files:
        lines = open(stat_files[0]).read().strip().splitlines()
        col = {h: i for i, h in enumerate(lines[0].split(";"))}
        last = lines[-1].split(";")
        out["successful"] = int(last[col["SuccessfulCall(C)"]])
        out["failed"] = int(last[col["FailedCall(C)"]])
        if "Retransmissions(C)" in col:
            out["retransmissions"] = int(last[col["Retransmissions(C)"]])
    for f in glob.glob(os.path.join(d, "*_rtt.csv")):
        for line in open(f).read().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                try:
                    out["rtts"].append(float(parts[1]))
                except ValueError:
                    pass
    for f in glob.glob(os.path.join(d, "*_shortmessages.log")):
        out["setup_ms"] = invite_to_200_from_shortmsg(f)
    return out


def invite_to_200_timed(path):
    """(epoch seconds the first INVITE was sent, INVITE->200 in ms) per call from a SIPp
    -trace_shortmsg log: tab-separated date, time, epoch seconds with microseconds,
    S(ent)/R(eceived), Call-ID, CSeq, first line. From the first INVITE sent (not its
    retransmissions) to the first 200 received for it."""
    sent, out = {}, []
    with open(path, errors="replace") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 7 or not p[5].endswith(" INVITE"):
                continue
            if p[3] == "S" and p[6].startswith("INVITE ") and p[4] not in sent:
                sent[p[4]] = float(p[2])
            elif p[3] == "R" and p[6].startswith("SIP/2.0 200") and p[4] in sent:
                t = sent.pop(p[4])
                out.append((t, 1000 * (float(p[2]) - t)))
    return out


def invite_to_200_from_shortmsg(path):
    """INVITE->200 per call (ms), see invite_to_200_timed."""
    return [ms for _, ms in invite_to_200_timed(path)]


def sipp_failure_details(run):
    """SIPp's output tail and error log, for a run that did not exit 0."""
    import glob
    text = run["sipp"].stdout[-3000:] + run["sipp"].stderr[-3000:]
    errs = glob.glob(os.path.join(run["dir"], "*_errors.log"))
    if errs:
        text += open(errs[0]).read()[-3000:]
    return text


def rtt_summary(rtts):
    """p50 / p99 / max of INVITE->200 samples (ms), and their resolution when it is coarse:
    SIPp's response-time trace counts whole milliseconds of a clock that moves in kernel ticks,
    which shows as samples that are all multiples of one step."""
    step = None
    if rtts and all(float(r).is_integer() for r in rtts):
        step = 0
        for r in rtts:
            step = math.gcd(step, int(r))
        step = float(step or 1)
    return {"p50": percentile(rtts, 50), "p99": percentile(rtts, 99),
            "max": max(rtts) if rtts else None, "samples": len(rtts),
            "resolution_ms": step}


def fmt_rtt(s):
    mx = s["max"] if s["max"] is not None else float("nan")
    return f"{s['p50']:.2f} / {s['p99']:.2f} / {mx:.2f} ms ({s['samples']} samples)"


_LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def webhook_series(metrics, kind):
    """Callplane's webhook counters for one `kind` (e.g. "call_control"), summed over tenants:
    {"outcomes": {outcome: n}, "buckets": [(le seconds, cumulative n)], "count": n, "sum": s}."""
    outcomes, buckets, count, total = {}, {}, 0, 0.0
    for key, value in metrics.items():
        name, _, rest = key.partition("{")
        labels = dict(_LABELS.findall(rest))
        if labels.get("kind") != kind:
            continue
        if name == "callplane_webhook_requests_total":
            outcomes[labels["outcome"]] = outcomes.get(labels["outcome"], 0) + int(value)
        elif name == "callplane_webhook_duration_seconds_bucket":
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            buckets[le] = buckets.get(le, 0) + int(value)
        elif name == "callplane_webhook_duration_seconds_count":
            count += int(value)
        elif name == "callplane_webhook_duration_seconds_sum":
            total += value
    return {"outcomes": outcomes, "buckets": sorted(buckets.items()), "count": count, "sum": total}


def histogram_quantile(buckets, q):
    """Prometheus-style estimate of quantile q (0..1) from cumulative (le, n) buckets: linear
    inside the bucket where it falls, so it is only as fine as the buckets around it. Returns
    (estimate, lower bound, upper bound) in seconds."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan"), float("nan"), float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_n = 0.0, 0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le, prev_le, le
            if n == prev_n:
                return le, prev_le, le
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n), prev_le, le
        prev_le, prev_n = le, n
    return prev_le, prev_le, float("inf")


def webhook_latency(series):
    """Mean (exact, from sum/count) and bucket-estimated p50 / p99 of the webhook round trip
    as Callplane measures it, milliseconds."""
    out = {"count": series["count"],
           "mean_ms": 1000 * series["sum"] / series["count"] if series["count"] else float("nan")}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        est, lo, hi = histogram_quantile(series["buckets"], q)
        out[name + "_ms"] = 1000 * est
        out[name + "_bucket_ms"] = [1000 * lo, 1000 * hi]
    return out


def fmt_webhook_latency(w):
    if not w["count"]:
        return "no requests"
    return (f"mean {w['mean_ms']:.3f} ms; p50 ~{w['p50_ms']:.2f} ms (bucket {w['p50_bucket_ms'][0]:g}-"
            f"{w['p50_bucket_ms'][1]:g}), p99 ~{w['p99_ms']:.2f} ms (bucket {w['p99_bucket_ms'][0]:g}-"
            f"{w['p99_bucket_ms'][1]:g}) over {w['count']} requests")


def fmt_outcomes(outcomes):
    return ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1]) if v) or "none"


# ----- The events WebSocket, spoken with the standard library only ---------------------------

class EventsSocket:
    """A client of `GET /v1/events` over a plain socket (RFC 6455 framing; server frames are
    unmasked, ours are masked). `feed()` takes bytes read from the socket and returns the text
    messages completed; pings are answered by `feed` itself."""

    def __init__(self, port, key, query="", timeout=10):
        import base64
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        nonce = base64.b64encode(os.urandom(16)).decode()
        q = f"token={key}" + (f"&{query}" if query else "")
        self.sock.sendall((f"GET /v1/events?{q} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("events socket closed during the handshake")
            head += chunk
        status, rest = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise RuntimeError("events handshake refused: " + status.decode(errors="replace"))
        self.buf = bytearray(rest)
        self.closed = None
        self.queue = []

    def send_json(self, obj):
        self._send(0x1, json.dumps(obj).encode())

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            hdr = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            hdr = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(hdr + mask + body)

    def feed(self, data):
        """Appends `data`; returns the JSON messages now complete."""
        self.buf += data
        out = []
        while True:
            b = self.buf
            if len(b) < 2:
                return out
            opcode, n, i = b[0] & 0x0F, b[1] & 0x7F, 2
            if n == 126:
                if len(b) < 4:
                    return out
                n, i = int.from_bytes(b[2:4], "big"), 4
            elif n == 127:
                if len(b) < 10:
                    return out
                n, i = int.from_bytes(b[2:10], "big"), 10
            if len(b) < i + n:
                return out
            payload = bytes(b[i:i + n])
            del b[:i + n]
            if opcode == 0x1:
                out.append(json.loads(payload))
            elif opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.closed = (code, payload[2:].decode(errors="replace"))

    def recv_json(self):
        """Blocks for the next JSON message (the socket's timeout applies)."""
        self.queue.extend(self.feed(b""))
        while not self.queue:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("events socket closed")
            self.queue.extend(self.feed(chunk))
        return self.queue.pop(0)


# ----- a minimal SIP caller on one UDP socket (benches that must time both ends themselves) ---

def sip_invite(i, local, server, rtp_port, user, call_id):
    """An INVITE to number 100 offering PCMU at `rtp_port`, From `user`."""
    sdp = (f"v=0\r\no=bench {i} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           f"m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
    return (f"INVITE sip:100@{server[0]}:{server[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-inv-{i}\r\n"
            f"From: <sip:{user}@{local[0]}>;tag=f{i}\r\n"
            f"To: <sip:100@{server[0]}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:{user}@{local[0]}:{local[1]}>\r\nMax-Forwards: 70\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}").encode()


def sip_headers(msg):
    """The first line and the headers (lower-case names, first of each) of a SIP message."""
    head = msg.split("\r\n\r\n", 1)[0].split("\r\n")
    out = {}
    for line in head[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), v.strip())
    return head[0], out


def sip_ack(h, local, server):
    """The ACK for a 2xx whose headers are `h` (its Call-ID ends in `-<i>`)."""
    cid = h["call-id"]
    i = cid.rsplit("-", 1)[1]
    return (f"ACK sip:100@{server[0]}:{server[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-ack-{i}\r\n"
            f"From: {h['from']}\r\nTo: {h['to']}\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def sip_ok_for(msg):
    """200 OK to a request (a BYE)."""
    head = msg.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [l for l in head[1:] if l.split(":", 1)[0].strip().lower() in
            ("via", "from", "to", "call-id", "cseq")]
    return ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()

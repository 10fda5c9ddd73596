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
BIN = os.path.join(ROOT, "target", "release", "callplane")
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


class Server:
    """The callplane binary with a config written from `provisioning` (TOML text)."""

    def __init__(self, provisioning, rtp_range=(20000, 40000)):
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
trustedNetworks = ["127.0.0.0/8"]
promptsDir = "{ROOT}/prompts"
{provisioning}
"""
        self.config = os.path.join(self.dir, "callplane.toml")
        with open(self.config, "w") as f:
            f.write(cfg)
        self.log = open(os.path.join(self.dir, "callplane.log"), "w")
        env = dict(os.environ, CALLPLANE_LOG=os.environ.get("CALLPLANE_LOG", "warn,callplane=info"))
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
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
                k, v = line.split()
                out[k] = float(v)
        return out

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


def machine():
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "kernel": platform.release()}


def report(name, rows, data):
    os.makedirs(RESULTS, exist_ok=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{name}")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    data = dict(data, benchmark=name, machine=machine(), time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = os.path.join(RESULTS, name + ".json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    print(f"  (written to {os.path.relpath(path, ROOT)})")

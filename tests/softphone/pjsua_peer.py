#!/usr/bin/env python3
"""A real softphone for the end-to-end tests: PJSUA2 (pip package pjsua2-python), SIP over
one transport only (TCP by default, or `--transport udp`: the endpoint has no other), a null
audio device, RTP/UDP media, voice activity detection off (the phone itself sends RTP all the
time).

Run by tests/e2e_softphone.rs:

    pjsua_peer.py call --sip-port N --number 100 [--wait-disconnect 40] [--transport udp]
        Calls sip:<number>@127.0.0.1:N;transport=<tcp|udp>, waits for CONFIRMED, then for the
        server to end the call (at most --wait-disconnect seconds, then the phone hangs up).
        (The phone answers re-INVITEs the server sends meanwhile, e.g. hold and resume
        through the API; `reinvite_answers` has the SDP of each of its 200s.)
    pjsua_peer.py call --sip-port N --number 300 --sample 45
        The same, but for --sample seconds after CONFIRMED reads the RTP receive counter every
        second (the per-second deltas are reported), then the phone hangs up.
    pjsua_peer.py hold --sip-port N --number 200 --user bob --password secret
        Registers <user> over TCP (digest auth), calls <number> from a second account in the
        same endpoint; <user> answers the server's INVITE, puts the call on hold once it is
        confirmed (re-INVITE with a=sendonly), waits for the 200, then hangs up.

    pjsua_peer.py answer --sip-port N --user bob --password secret [--transport udp]
        Registers <user> (digest auth) and waits (--wait-call seconds) for a call to it, e.g.
        one placed through the API; answers it (180, then 200 after 0.3 s), then waits for
        the server to end it (at most --wait-disconnect seconds, then the phone hangs up).

Prints exactly one line `RESULT {json}` on stdout (facts only: the Rust test decides what is
right), everything else goes to stderr. Exits 0 even when something expected did not happen;
exit 2 means bad arguments or PJSUA2 could not start. Every wait is bounded.

The SIP messages come from PJSUA2's own message log (LogConfig.msgLogging, level 4), collected
by a LogWriter; the result carries the ones the test needs in full and a one-line-per-message
flow for failure messages.
"""

import argparse
import gc
import json
import os
import re
import sys
import time

import pjsua2 as pj

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"[peer {now():8.3f}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# PJSUA2's log: every entry kept (level <= 5), SIP messages parsed out of it
# ------------------------------------------------------------------------------------------

class Writer(pj.LogWriter):
    """Collects every log entry; entries up to level 4 (which includes the SIP messages) are
    echoed to stderr as they come."""

    def __init__(self):
        pj.LogWriter.__init__(self)
        self.entries = []  # (seconds since start, level, text)

    def write(self, entry):
        if entry.level > 5:
            return
        text = entry.msg
        self.entries.append((now(), entry.level, text))
        if entry.level <= 4:
            sys.stderr.write(f"[pj {now():8.3f}] {text.rstrip()}\n")
            sys.stderr.flush()


# "TX 612 bytes Request msg INVITE/cseq=1 (tdta0x..) to TCP 127.0.0.1:5060:\n<msg>\n--end msg--"
# "RX 480 bytes Response msg 200/INVITE/cseq=1 (rdata0x..) from TCP 127.0.0.1:5060:\n<msg>..."
MSG_RE = re.compile(
    r"(RX|TX) (\d+) bytes (Request|Response) msg (\S+) \([^)]*\) (?:from|to) (\S+) (\S+?):?\r?\n"
    r"(.*?)\r?\n--end msg--",
    re.S,
)

COMPACT = {
    "m": "contact",
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "c": "content-type",
    "l": "content-length",
    "k": "supported",
}


class Msg:
    def __init__(self, t, direction, transport, peer, text):
        self.t = t
        self.dir = direction  # "rx" or "tx"
        self.transport = transport
        self.peer = peer
        self.text = text.replace("\r\n", "\n")

    def first_line(self):
        return self.text.split("\n", 1)[0]

    def is_response(self):
        return self.first_line().startswith("SIP/2.0 ")

    def status(self):
        if not self.is_response():
            return None
        try:
            return int(self.first_line().split()[1])
        except (IndexError, ValueError):
            return None

    def method(self):
        if self.is_response():
            return None
        return self.first_line().split(" ", 1)[0]

    def headers(self, name):
        name = name.lower()
        out = []
        for line in self.text.split("\n")[1:]:
            if not line.strip():
                break
            if ":" not in line:
                continue
            k, v = line.split(":", 1)
            k = k.strip().lower()
            k = COMPACT.get(k, k)
            if k == name:
                out.append(v.strip())
        return out

    def header(self, name):
        h = self.headers(name)
        return h[0] if h else None

    def cseq(self):
        c = self.header("cseq")
        if not c:
            return (None, None)
        parts = c.split()
        try:
            return (int(parts[0]), parts[1] if len(parts) > 1 else None)
        except ValueError:
            return (None, None)

    def call_id(self):
        return self.header("call-id")

    def body(self):
        i = self.text.find("\n\n")
        return self.text[i + 2:] if i >= 0 else ""

    def summary(self):
        return f"{self.t:8.3f} {self.dir} {self.transport} {self.peer} {self.first_line()}"

    def to_json(self):
        return {
            "t": round(self.t, 3),
            "dir": self.dir,
            "transport": self.transport,
            "peer": self.peer,
            "text": self.text,
        }


def messages(writer):
    out = []
    for t, _level, text in list(writer.entries):
        if "--end msg--" not in text:
            continue
        m = MSG_RE.search(text)
        if not m:
            continue
        direction = m.group(1).lower()
        out.append(Msg(t, direction, m.group(5), m.group(6).rstrip(":"), m.group(7)))
    return out


def flow(msgs):
    return [m.summary() for m in msgs]


def find(msgs, pred):
    for m in msgs:
        if pred(m):
            return m
    return None


def disconnected_by(msgs, call_id):
    """Who sent the first BYE of this call, from the message log."""
    for m in msgs:
        if m.method() == "BYE" and m.call_id() == call_id:
            return "server" if m.dir == "rx" else "phone"
    return None


# ------------------------------------------------------------------------------------------
# Calls and accounts
# ------------------------------------------------------------------------------------------

STATE_NAMES = {
    pj.PJSIP_INV_STATE_NULL: "NULL",
    pj.PJSIP_INV_STATE_CALLING: "CALLING",
    pj.PJSIP_INV_STATE_INCOMING: "INCOMING",
    pj.PJSIP_INV_STATE_EARLY: "EARLY",
    pj.PJSIP_INV_STATE_CONNECTING: "CONNECTING",
    pj.PJSIP_INV_STATE_CONFIRMED: "CONFIRMED",
    pj.PJSIP_INV_STATE_DISCONNECTED: "DISCONNECTED",
}

MEDIA_STATUS_NAMES = {
    pj.PJSUA_CALL_MEDIA_NONE: "NONE",
    pj.PJSUA_CALL_MEDIA_ACTIVE: "ACTIVE",
    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "LOCAL_HOLD",
    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "REMOTE_HOLD",
    pj.PJSUA_CALL_MEDIA_ERROR: "ERROR",
}


class PeerCall(pj.Call):
    def __init__(self, peer, acc, name, call_id=pj.PJSUA_INVALID_ID):
        pj.Call.__init__(self, acc, call_id)
        self.peer = peer
        self.name = name
        self.states = []  # (t, state name)
        self.media_states = []  # (t, status name)
        self.confirmed_at = None
        self.disconnected_at = None
        self.last_status = None
        self.last_reason = None
        self.connect_duration = None
        self.sip_call_id = None
        self.rx_pkt = 0

    def sample_rx(self):
        """The RTP packets received so far (RTCP statistics of the audio stream); the last
        good value is kept once the stream is gone."""
        try:
            if self.disconnected_at is None and self.hasMedia():
                st = self.getStreamStat(0)
                self.rx_pkt = max(self.rx_pkt, int(st.rtcp.rxStat.pkt))
        except pj.Error:
            pass
        return self.rx_pkt

    def onCallState(self, prm):
        ci = self.getInfo()
        name = STATE_NAMES.get(ci.state, str(ci.state))
        self.sip_call_id = ci.callIdString
        self.states.append((round(now(), 3), name))
        log(f"{self.name}: state {name} ({ci.lastStatusCode} {ci.lastReason})")
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = now()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.sample_rx()
            self.disconnected_at = now()
            self.last_status = ci.lastStatusCode
            self.last_reason = ci.lastReason
            self.connect_duration = ci.connectDuration.sec + ci.connectDuration.msec / 1000.0

    def onCallMediaState(self, prm):
        ci = self.getInfo()
        for mi in ci.media:
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            status = MEDIA_STATUS_NAMES.get(mi.status, str(mi.status))
            self.media_states.append((round(now(), 3), status))
            log(f"{self.name}: audio media {status}")
            if mi.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                # Like a phone: the call's audio to the (null) speaker, the (null) microphone
                # to the call.
                try:
                    am = self.getAudioMedia(mi.index)
                    adm = self.peer.ep.audDevManager()
                    am.startTransmit(adm.getPlaybackDevMedia())
                    adm.getCaptureDevMedia().startTransmit(am)
                except pj.Error as e:
                    log(f"{self.name}: cannot connect audio: {e.info()}")

    def summary(self):
        return {
            "name": self.name,
            "sip_call_id": self.sip_call_id,
            "states": self.states,
            "media_states": self.media_states,
            "confirmed": self.confirmed_at is not None,
            "confirmed_at": None if self.confirmed_at is None else round(self.confirmed_at, 3),
            "disconnected_at": None
            if self.disconnected_at is None
            else round(self.disconnected_at, 3),
            "confirmed_to_disconnected": None
            if self.confirmed_at is None or self.disconnected_at is None
            else round(self.disconnected_at - self.confirmed_at, 3),
            "last_status": self.last_status,
            "last_reason": self.last_reason,
            "connect_duration": self.connect_duration,
            "rtp_rx_packets": self.rx_pkt,
        }


class PeerAccount(pj.Account):
    def __init__(self, peer, name):
        pj.Account.__init__(self)
        self.peer = peer
        self.name = name
        self.reg_status = None
        self.reg_expires = None
        self.incoming = []

    def onRegState(self, prm):
        self.reg_status = prm.code
        self.reg_expires = prm.expiration
        log(f"{self.name}: registration {prm.code} {prm.reason} expires={prm.expiration}")

    def onIncomingCall(self, prm):
        call = PeerCall(self.peer, self, f"{self.name}-in{len(self.incoming)}", prm.callId)
        self.incoming.append(call)  # the Python reference keeps the call alive
        log(f"{self.name}: incoming call, answering 180")
        op = pj.CallOpParam()
        op.statusCode = 180
        call.answer(op)
        self.peer.to_answer.append((now() + 0.3, call))


class Peer:
    def __init__(self, sip_port, transport="tcp"):
        self.sip_port = sip_port
        self.transport = transport
        self.to_answer = []  # (when, call): 200 OK at that time
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        # All SIP processing (and every callback but the log's) in this thread, inside
        # libHandleEvents.
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 8
        cfg.uaConfig.userAgent = "callplane-e2e PJSUA2 " + self.ep.libVersion().full
        self.writer = Writer()
        cfg.logConfig.writer = self.writer
        cfg.logConfig.level = 5
        cfg.logConfig.consoleLevel = 5
        cfg.logConfig.msgLogging = True
        cfg.logConfig.decor = pj.PJ_LOG_HAS_SENDER
        cfg.medConfig.noVad = True
        self.ep.libInit(cfg)
        # SIP over one transport only, so nothing can fall back to the other.
        tcfg = pj.TransportConfig()
        tcfg.port = 0
        tcfg.boundAddress = "127.0.0.1"
        kind = pj.PJSIP_TRANSPORT_TCP if transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
        self.tid = self.ep.transportCreate(kind, tcfg)
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        info = self.ep.transportGetInfo(self.tid)
        log(f"PJSUA2 {self.ep.libVersion().full} started, SIP {transport} transport {info.localName}")
        self.accounts = []
        self.calls = []

    def account(self, name, registrar_user=None, password=None):
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{registrar_user or name}@127.0.0.1"
        acfg.sipConfig.transportId = self.tid
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        if registrar_user:
            acfg.regConfig.registrarUri = f"sip:127.0.0.1:{self.sip_port};transport={self.transport}"
            acfg.regConfig.timeoutSec = 300
            acfg.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", registrar_user, 0, password)
            )
        else:
            acfg.regConfig.registrarUri = ""
        acc = PeerAccount(self, name)
        acc.create(acfg)
        self.accounts.append(acc)
        return acc

    def call(self, acc, name, number):
        call = PeerCall(self, acc, name)
        self.calls.append(call)
        prm = pj.CallOpParam(True)
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        uri = f"sip:{number}@127.0.0.1:{self.sip_port};transport={self.transport}"
        log(f"{name}: calling {uri}")
        call.makeCall(uri, prm)
        return call

    def all_calls(self):
        out = list(self.calls)
        for a in self.accounts:
            out.extend(a.incoming)
        return out

    def poll(self, ms=20):
        self.ep.libHandleEvents(ms)
        t = now()
        due = [c for (w, c) in self.to_answer if w <= t]
        self.to_answer = [(w, c) for (w, c) in self.to_answer if w > t]
        for c in due:
            if c.disconnected_at is None:
                log(f"{c.name}: answering 200")
                op = pj.CallOpParam(True)
                op.statusCode = 200
                op.opt.audioCount = 1
                op.opt.videoCount = 0
                try:
                    c.answer(op)
                except pj.Error as e:
                    log(f"{c.name}: answer failed: {e.info()}")
        for c in self.all_calls():
            c.sample_rx()

    def wait(self, secs, pred):
        """Handles events until pred() or secs have passed; returns pred()."""
        deadline = now() + secs
        while now() < deadline:
            if pred():
                return True
            self.poll(20)
        return pred()

    def hangup(self, call):
        if call.disconnected_at is None:
            log(f"{call.name}: hanging up")
            try:
                call.hangup(pj.CallOpParam(True))
            except pj.Error as e:
                log(f"{call.name}: hangup failed: {e.info()}")

    def shutdown(self):
        """Hangs up what is left, waits (bounded) for the calls to end, then drops every
        Call and Account wrapper while the library still runs (their C++ destructors use
        pjsua's call and account tables, which libDestroy empties) and destroys the library."""
        calls = self.all_calls()
        for call in calls:
            self.hangup(call)
        self.wait(5, lambda: all(c.disconnected_at is not None for c in calls))
        for acc in self.accounts:
            try:
                acc.shutdown()
            except pj.Error:
                pass
        self.wait(1, lambda: False)
        call = calls = acc = None
        self.calls = []
        for a in self.accounts:
            a.incoming = []
        a = None
        self.accounts = []
        self.to_answer = []
        gc.collect()
        self.ep.libDestroy()


# ------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------

def scenario_call(peer, args, result):
    acc = peer.account("caller")
    call = peer.call(acc, "caller", args.number)
    confirmed = peer.wait(
        15, lambda: call.confirmed_at is not None or call.disconnected_at is not None
    )
    result["confirmed"] = call.confirmed_at is not None
    if not confirmed or call.confirmed_at is None:
        log("the call was not confirmed")
    elif args.sample:
        # Read the RTP counter once a second for --sample seconds after CONFIRMED.
        samples = [call.sample_rx()]
        start = call.confirmed_at
        for k in range(1, args.sample + 1):
            peer.wait(max(0.0, start + k - now()), lambda: call.disconnected_at is not None)
            if call.disconnected_at is not None:
                log(f"the call ended during second {k}")
                break
            samples.append(call.sample_rx())
        result["rx_samples"] = samples
        result["rx_per_second"] = [b - a for a, b in zip(samples, samples[1:])]
        peer.hangup(call)
        peer.wait(10, lambda: call.disconnected_at is not None)
    else:
        peer.wait(args.wait_disconnect, lambda: call.disconnected_at is not None)
        if call.disconnected_at is None:
            log(f"the server did not end the call within {args.wait_disconnect} s")
            peer.hangup(call)
            peer.wait(10, lambda: call.disconnected_at is not None)
    # The answer to a BYE comes after DISCONNECTED: let it into the log.
    peer.wait(0.5, lambda: False)
    msgs = messages(peer.writer)
    cid = call.sip_call_id
    result["call"] = call.summary()
    result["disconnected_by"] = disconnected_by(msgs, cid)
    ok = find(
        msgs,
        lambda m: m.dir == "rx"
        and m.status() == 200
        and m.cseq()[1] == "INVITE"
        and m.call_id() == cid,
    )
    result["invite_200"] = ok.to_json() if ok else None
    result["invite_200_contact"] = ok.header("contact") if ok else None
    # The phone's answers to the server's re-INVITEs (hold and resume from the server's side).
    result["reinvite_answers"] = [
        m.body()
        for m in msgs
        if m.dir == "tx" and m.status() == 200 and m.cseq()[1] == "INVITE" and m.call_id() == cid
    ]
    result["flow"] = flow(msgs)


def scenario_hold(peer, args, result):
    bob = peer.account(args.user, registrar_user=args.user, password=args.password)
    registered = peer.wait(10, lambda: bob.reg_status is not None and bob.reg_status // 100 != 1)
    result["register_status"] = bob.reg_status
    if not registered or bob.reg_status != 200:
        log(f"registration failed: {bob.reg_status}")
        result["flow"] = flow(messages(peer.writer))
        return
    caller = peer.account("caller")
    out = peer.call(caller, "caller", args.number)

    def bob_call():
        return bob.incoming[0] if bob.incoming else None

    both = peer.wait(
        20,
        lambda: (
            out.disconnected_at is not None
            or (
                out.confirmed_at is not None
                and bob_call() is not None
                and bob_call().confirmed_at is not None
            )
        ),
    )
    b = bob_call()
    result["caller_confirmed"] = out.confirmed_at is not None
    result["bob_got_call"] = b is not None
    result["bob_confirmed"] = b is not None and b.confirmed_at is not None
    hold_sent_at = None
    if both and b is not None and b.confirmed_at is not None and out.disconnected_at is None:
        peer.wait(1.0, lambda: b.disconnected_at is not None)
        if b.disconnected_at is None:
            log(f"{b.name}: putting the call on hold")
            hold_sent_at = now()
            try:
                b.setHold(pj.CallOpParam(True))
            except pj.Error as e:
                log(f"{b.name}: setHold failed: {e.info()}")

            def hold_answered():
                if b.disconnected_at is not None:
                    return True
                for m in messages(peer.writer):
                    if (
                        m.t >= hold_sent_at
                        and m.dir == "rx"
                        and m.call_id() == b.sip_call_id
                        and m.cseq()[1] == "INVITE"
                        and (m.status() or 0) >= 200
                    ):
                        return True
                return False

            peer.wait(10, hold_answered)
            # Held for a moment, then bob hangs up.
            peer.wait(1.0, lambda: b.disconnected_at is not None)
            peer.hangup(b)
    peer.wait(
        10,
        lambda: out.disconnected_at is not None and (b is None or b.disconnected_at is not None),
    )
    peer.wait(0.5, lambda: False)

    msgs = messages(peer.writer)
    result["caller_call"] = out.summary()
    result["bob_call"] = b.summary() if b else None
    result["hold_sent"] = hold_sent_at is not None
    if b is not None:
        cid = b.sip_call_id
        invite = find(
            msgs, lambda m: m.dir == "rx" and m.method() == "INVITE" and m.call_id() == cid
        )
        reinvite = find(
            msgs,
            lambda m: m.dir == "tx"
            and m.method() == "INVITE"
            and m.call_id() == cid
            and hold_sent_at is not None
            and m.t >= hold_sent_at,
        )
        answer = None
        if reinvite is not None:
            cseq = reinvite.cseq()[0]
            answer = find(
                msgs,
                lambda m: m.dir == "rx"
                and m.call_id() == cid
                and m.cseq() == (cseq, "INVITE")
                and (m.status() or 0) >= 200,
            )
        result["invite_to_bob"] = invite.to_json() if invite else None
        result["hold_reinvite"] = reinvite.to_json() if reinvite else None
        result["hold_answer"] = answer.to_json() if answer else None
        result["disconnected_by"] = disconnected_by(msgs, cid)
    result["flow"] = flow(msgs)


def scenario_answer(peer, args, result):
    acc = peer.account(args.user, registrar_user=args.user, password=args.password)
    registered = peer.wait(10, lambda: acc.reg_status is not None and acc.reg_status // 100 != 1)
    result["register_status"] = acc.reg_status
    if not registered or acc.reg_status != 200:
        log(f"registration failed: {acc.reg_status}")
        result["flow"] = flow(messages(peer.writer))
        return
    result["got_call"] = peer.wait(args.wait_call, lambda: bool(acc.incoming))
    if not acc.incoming:
        log(f"no call within {args.wait_call} s")
        result["flow"] = flow(messages(peer.writer))
        return
    call = acc.incoming[0]
    peer.wait(15, lambda: call.confirmed_at is not None or call.disconnected_at is not None)
    result["confirmed"] = call.confirmed_at is not None
    # The RTP packets the audio stream counted, read every 0.5 s until the call ends (the
    # count restarts when a re-INVITE renews the stream).
    rx_samples = []
    deadline = now() + args.wait_disconnect
    while call.disconnected_at is None and now() < deadline:
        peer.wait(0.5, lambda: call.disconnected_at is not None)
        if call.disconnected_at is None:
            try:
                if call.hasMedia():
                    rx_samples.append([round(now(), 3), int(call.getStreamStat(0).rtcp.rxStat.pkt)])
            except pj.Error:
                pass
    result["rx_samples"] = rx_samples
    if call.disconnected_at is None:
        log(f"the server did not end the call within {args.wait_disconnect} s")
        peer.hangup(call)
        peer.wait(10, lambda: call.disconnected_at is not None)
    peer.wait(0.5, lambda: False)
    msgs = messages(peer.writer)
    cid = call.sip_call_id
    result["call"] = call.summary()
    result["disconnected_by"] = disconnected_by(msgs, cid)
    invite = find(msgs, lambda m: m.dir == "rx" and m.method() == "INVITE" and m.call_id() == cid)
    result["invite"] = invite.to_json() if invite else None
    # Every INVITE of the call the phone received (the call's, then re-INVITEs), and its
    # answers to the re-INVITEs (its first 200 answers the call itself).
    result["invite_bodies"] = [
        m.body() for m in msgs if m.dir == "rx" and m.method() == "INVITE" and m.call_id() == cid
    ]
    result["reinvite_answers"] = [
        m.body()
        for m in msgs
        if m.dir == "tx" and m.status() == 200 and m.cseq()[1] == "INVITE" and m.call_id() == cid
    ][1:]
    result["flow"] = flow(msgs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=["call", "hold", "answer"])
    ap.add_argument("--sip-port", type=int, required=True)
    ap.add_argument("--number", default="")
    ap.add_argument("--wait-call", type=float, default=20.0)
    ap.add_argument("--wait-disconnect", type=float, default=40.0)
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--user", default="bob")
    ap.add_argument("--password", default="")
    ap.add_argument("--transport", choices=["tcp", "udp"], default="tcp")
    args = ap.parse_args()

    result = {"scenario": args.scenario}
    try:
        peer = Peer(args.sip_port, args.transport)
    except pj.Error as e:
        log(f"PJSUA2 did not start: {e.info()}")
        print("RESULT " + json.dumps({"scenario": args.scenario, "error": e.info()}), flush=True)
        sys.exit(2)
    result["pjsua2"] = peer.ep.libVersion().full
    try:
        if args.scenario == "call":
            scenario_call(peer, args, result)
        elif args.scenario == "answer":
            scenario_answer(peer, args, result)
        else:
            scenario_hold(peer, args, result)
    except pj.Error as e:
        log(f"PJSUA2 error: {e.info()}")
        result["error"] = e.info()
        result["flow"] = flow(messages(peer.writer))
    result["elapsed"] = round(now(), 3)
    # The result first: nothing that happens while tearing down can lose it.
    print("RESULT " + json.dumps(result), flush=True)
    try:
        peer.shutdown()
    except pj.Error as e:
        log(f"shutdown: {e.info()}")
    log("done")
    sys.stderr.flush()
    # Skip Python's finalizers: SWIG objects collected after libDestroy can crash the process.
    os._exit(0)


if __name__ == "__main__":
    main()

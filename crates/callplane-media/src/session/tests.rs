//! Loopback tests of the RTP endpoint: real UDP sockets on 127.0.0.1 playing the phone.

use super::*;
use crate::g711;
use std::net::Ipv4Addr;
use tokio::time::timeout;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn engine() -> MediaEngine {
    MediaEngine::new(MediaConfig {
        bind_ip: LOCAL,
        advertise_ip: LOCAL,
        port_min: 30000,
        port_max: 39998,
    })
}

async fn phone() -> UdpSocket {
    UdpSocket::bind((LOCAL, 0)).await.unwrap()
}

fn remote(sock: &UdpSocket, codec: Codec, te: Option<u8>) -> RemoteMedia {
    RemoteMedia {
        addr: sock.local_addr().unwrap(),
        codec,
        pt: codec.payload_type(),
        telephone_event_pt: te,
    }
}

/// Receive one datagram with a deadline.
async fn recv(sock: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    match timeout(within, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn next_event(rx: &mut mpsc::Receiver<MediaEvent>, within: Duration) -> Option<MediaEvent> {
    timeout(within, rx.recv()).await.ok().flatten()
}

fn rtp_packet(marker: bool, pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 12];
    write_rtp_header(&mut v, marker, pt, seq, ts, ssrc);
    v.extend_from_slice(payload);
    v
}

fn tone(n: usize, freq: f64, amp: f64) -> Vec<i16> {
    (0..n)
        .map(|i| (amp * (std::f64::consts::TAU * freq * i as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// Send `frames` of PCMU built from `pcm` at 20 ms pace from `sock` to `to`.
async fn send_audio(
    sock: &UdpSocket,
    to: SocketAddr,
    codec: Codec,
    pcm: &[i16],
    seq0: u16,
    ts0: u32,
    paced: bool,
) {
    for (i, frame) in pcm.chunks(160).enumerate() {
        let mut payload = vec![0u8; frame.len()];
        codec.encode(frame, &mut payload);
        let pkt = rtp_packet(
            i == 0,
            codec.payload_type(),
            seq0.wrapping_add(i as u16),
            ts0.wrapping_add(160 * i as u32),
            0xABCD,
            &payload,
        );
        sock.send_to(&pkt, to).await.unwrap();
        if paced {
            tokio::time::sleep(FRAME).await;
        }
    }
}

#[tokio::test]
async fn allocate_even_ports_and_free_on_drop() {
    let eng = MediaEngine::new(MediaConfig {
        bind_ip: LOCAL,
        advertise_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        port_min: 29001,
        port_max: 29003,
    });
    // Only 29002 is usable.
    let leg = eng.allocate().await.unwrap();
    assert_eq!(leg.local_addr(), "192.0.2.1:29002".parse().unwrap());
    assert!(matches!(
        eng.allocate().await,
        Err(MediaError::NoFreePort { .. })
    ));
    drop(leg);
    // The task closes asynchronously; the port comes back promptly.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(l) = eng.allocate().await {
            again = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = again.expect("port freed after drop");
    again.close();
    for _ in 0..100 {
        if again.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again.is_closed());
    assert!(eng.allocate().await.is_ok(), "close() frees the port too");

    let bad = MediaEngine::new(MediaConfig {
        bind_ip: LOCAL,
        advertise_ip: LOCAL,
        port_min: 29005,
        port_max: 29005,
    });
    assert!(matches!(
        bad.allocate().await,
        Err(MediaError::InvalidPortRange { .. })
    ));
}

#[tokio::test]
async fn play_one_second_tone_paced() {
    let eng = engine();
    let mut leg = eng.allocate().await.unwrap();
    let mut events = leg.take_events().unwrap();
    assert!(leg.take_events().is_none());
    let ph = phone().await;
    leg.set_remote(remote(&ph, Codec::Pcmu, None));
    let samples: Arc<[i16]> = tone(8000, 440.0, 8000.0).into();
    let id = leg.play(samples.clone());

    let mut packets = Vec::new();
    let mut arrivals = Vec::new();
    while packets.len() < 50 {
        let p = recv(&ph, Duration::from_secs(2)).await.expect("packet");
        arrivals.push(Instant::now());
        packets.push(p);
    }
    // Nothing after the tone ends.
    assert!(recv(&ph, Duration::from_millis(150)).await.is_none());
    let span = arrivals[49].duration_since(arrivals[0]);
    assert!(
        span >= Duration::from_millis(800) && span <= Duration::from_millis(1500),
        "50 frames took {span:?}"
    );
    let first = RtpPacket::parse(&packets[0]).unwrap();
    for (i, raw) in packets.iter().enumerate() {
        let p = RtpPacket::parse(raw).unwrap();
        assert_eq!(p.payload_type, 0);
        assert_eq!(p.marker, i == 0, "marker only on the first frame");
        assert_eq!(p.ssrc, first.ssrc);
        assert_eq!(p.sequence, first.sequence.wrapping_add(i as u16));
        assert_eq!(p.timestamp, first.timestamp.wrapping_add(160 * i as u32));
        let mut expect = [0u8; 160];
        Codec::Pcmu.encode(&samples[i * 160..(i + 1) * 160], &mut expect);
        assert_eq!(p.payload, &expect[..], "frame {i}");
        let mut dec = [0i16; 160];
        Codec::Pcmu.decode(p.payload, &mut dec);
        for (a, b) in dec.iter().zip(&samples[i * 160..]) {
            assert!((*a as i32 - *b as i32).abs() < 300);
        }
    }
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Some(MediaEvent::PlayFinished {
            id,
            completed: true
        })
    );
    let st = leg.stats();
    assert_eq!(st.packets_sent, 50);
    assert_eq!(st.bytes_sent, 8000);

    // A second play continues the sequence and starts a new talkspurt.
    let id2 = leg.play(tone(320, 1000.0, 3000.0).into());
    assert_ne!(id, id2);
    let a = RtpPacket::parse(&recv(&ph, Duration::from_secs(1)).await.unwrap())
        .map(|p| (p.marker, p.sequence, p.timestamp))
        .unwrap();
    assert!(a.0);
    assert_eq!(a.1, first.sequence.wrapping_add(50));
    let gap = a.2.wrapping_sub(first.timestamp.wrapping_add(50 * 160));
    assert!(gap < 8000, "timestamp advanced by idle time, {gap}");
}

#[tokio::test]
async fn stop_play_barge_in_and_queue() {
    let eng = engine();
    let mut leg = eng.allocate().await.unwrap();
    let mut events = leg.take_events().unwrap();
    let ph = phone().await;
    leg.set_remote(remote(&ph, Codec::Pcma, None));
    let long: Arc<[i16]> = tone(80000, 500.0, 5000.0).into();
    let a = leg.play(long.clone());
    let b = leg.play(long);
    for _ in 0..5 {
        recv(&ph, Duration::from_secs(1)).await.unwrap();
    }
    leg.stop_play();
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Some(MediaEvent::PlayFinished {
            id: a,
            completed: false
        })
    );
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Some(MediaEvent::PlayFinished {
            id: b,
            completed: false
        })
    );
    // Drain what was in flight, then silence.
    while recv(&ph, Duration::from_millis(100)).await.is_some() {}
    let e = leg.play(Arc::from(Vec::new()));
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Some(MediaEvent::PlayFinished {
            id: e,
            completed: true
        })
    );
    assert!(recv(&ph, Duration::from_millis(100)).await.is_none());
}

#[tokio::test]
async fn rfc4733_receive_one_event_per_digit() {
    let eng = engine();
    let mut leg = eng.allocate().await.unwrap();
    let mut events = leg.take_events().unwrap();
    let ph = phone().await;
    leg.set_remote(remote(&ph, Codec::Pcmu, Some(101)));
    let to = leg.local_addr();
    let mut seq = 100u16;
    for (n, digit) in "1#1".chars().enumerate() {
        let ts = 5000 + n as u32 * 4000;
        for p in Rfc4733Sender::new(digit).unwrap() {
            let pkt = rtp_packet(p.marker, 101, seq, ts, 77, &p.event.to_bytes());
            seq = seq.wrapping_add(1);
            ph.send_to(&pkt, to).await.unwrap();
            // A duplicate of every packet too (network duplication).
            ph.send_to(&pkt, to).await.unwrap();
        }
    }
    let mut got = Vec::new();
    while let Some(ev) = next_event(&mut events, Duration::from_millis(300)).await {
        got.push(ev);
    }
    let dtmf = |digit| MediaEvent::Dtmf {
        digit,
        source: DtmfSource::Rfc4733,
    };
    assert_eq!(got, vec![dtmf('1'), dtmf('#'), dtmf('1')]);
    let st = leg.stats();
    assert_eq!(st.packets_received, 42);
    assert_eq!(st.late_frames, 21);
    assert_eq!(st.lost, 0);
    assert!(st.last_received_at.is_some());
}

#[tokio::test]
async fn bridge_relays_and_transcodes_both_ways() {
    let eng = engine();
    let mut leg_a = eng.allocate().await.unwrap();
    let leg_b = eng.allocate().await.unwrap();
    let mut events_a = leg_a.take_events().unwrap();
    let phone_a = phone().await;
    let phone_b = phone().await;
    leg_a.set_remote(remote(&phone_a, Codec::Pcmu, Some(101)));
    leg_b.set_remote(RemoteMedia {
        addr: phone_b.local_addr().unwrap(),
        codec: Codec::Pcma,
        pt: 8,
        telephone_event_pt: Some(96),
    });
    leg_a.bridge(&leg_b);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A -> B: PCMU in, PCMA out.
    let pcm = tone(1600, 700.0, 9000.0);
    send_audio(
        &phone_a,
        leg_a.local_addr(),
        Codec::Pcmu,
        &pcm,
        1000,
        90000,
        false,
    )
    .await;
    let mut first_b: Option<(u16, u32, u32)> = None;
    for i in 0..10 {
        let raw = recv(&phone_b, Duration::from_secs(1))
            .await
            .expect("relayed to B");
        let p = RtpPacket::parse(&raw).unwrap();
        assert_eq!(p.payload_type, 8);
        let mut u = [0u8; 160];
        Codec::Pcmu.encode(&pcm[i * 160..(i + 1) * 160], &mut u);
        let mut expect = [0u8; 160];
        g711::transcode_ulaw_to_alaw(&u, &mut expect);
        assert_eq!(p.payload, &expect[..]);
        let (s0, t0, ssrc) = *first_b.get_or_insert((p.sequence, p.timestamp, p.ssrc));
        assert_eq!(p.ssrc, ssrc);
        assert_ne!(p.ssrc, 0xABCD, "SSRC rewritten");
        assert_eq!(p.sequence, s0.wrapping_add(i as u16));
        assert_eq!(p.timestamp, t0.wrapping_add(160 * i as u32));
        assert_eq!(p.marker, i == 0);
    }
    // B -> A: PCMA in, PCMU out.
    send_audio(&phone_b, leg_b.local_addr(), Codec::Pcma, &pcm, 7, 1, false).await;
    for i in 0..10 {
        let raw = recv(&phone_a, Duration::from_secs(1))
            .await
            .expect("relayed to A");
        let p = RtpPacket::parse(&raw).unwrap();
        assert_eq!(p.payload_type, 0);
        let mut a = [0u8; 160];
        Codec::Pcma.encode(&pcm[i * 160..(i + 1) * 160], &mut a);
        let mut expect = [0u8; 160];
        g711::transcode_alaw_to_ulaw(&a, &mut expect);
        assert_eq!(p.payload, &expect[..]);
    }
    // Telephone-event from A reaches B with B's payload type, and A reports it.
    let ev = TelephoneEvent {
        event: 5,
        end: false,
        volume: 10,
        duration: 160,
    };
    let pkt = rtp_packet(true, 101, 1010, 91600, 0xABCD, &ev.to_bytes());
    phone_a.send_to(&pkt, leg_a.local_addr()).await.unwrap();
    let raw = recv(&phone_b, Duration::from_secs(1)).await.unwrap();
    let p = RtpPacket::parse(&raw).unwrap();
    assert_eq!(p.payload_type, 96);
    assert!(p.marker);
    assert_eq!(p.payload, &ev.to_bytes());
    let (s0, t0, _) = first_b.unwrap();
    assert_eq!(p.sequence, s0.wrapping_add(10), "seq continues the stream");
    assert_eq!(p.timestamp, t0.wrapping_add(1600));
    assert_eq!(
        next_event(&mut events_a, Duration::from_secs(1)).await,
        Some(MediaEvent::Dtmf {
            digit: '5',
            source: DtmfSource::Rfc4733
        })
    );
    assert_eq!(leg_b.stats().packets_sent, 11);
    assert_eq!(leg_a.stats().packets_received, 11);

    // After unbridge nothing is relayed.
    leg_b.unbridge();
    tokio::time::sleep(Duration::from_millis(50)).await;
    send_audio(
        &phone_a,
        leg_a.local_addr(),
        Codec::Pcmu,
        &pcm[..320],
        2000,
        99000,
        false,
    )
    .await;
    assert!(recv(&phone_b, Duration::from_millis(200)).await.is_none());

    // Re-bridge, then dropping one leg ends the relay from the other without panics.
    leg_a.bridge(&leg_b);
    tokio::time::sleep(Duration::from_millis(50)).await;
    send_audio(
        &phone_b,
        leg_b.local_addr(),
        Codec::Pcma,
        &pcm[..160],
        50,
        5000,
        false,
    )
    .await;
    assert!(recv(&phone_a, Duration::from_secs(1)).await.is_some());
    drop(leg_a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    send_audio(
        &phone_b,
        leg_b.local_addr(),
        Codec::Pcma,
        &pcm[..160],
        51,
        5160,
        false,
    )
    .await;
    assert!(recv(&phone_a, Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn recording_has_right_length_and_content() {
    let eng = engine();
    let leg = eng.allocate().await.unwrap();
    let ph = phone().await;
    leg.set_remote(remote(&ph, Codec::Pcma, None));
    let dir = std::env::temp_dir().join(format!("cp-media-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("leg.wav");
    leg.start_recording(path.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pcm = tone(8000, 440.0, 6000.0);
    // Drop frame 10 (loss) and send frame 20 twice: still exactly 1 s of audio.
    for (i, frame) in pcm.chunks(160).enumerate() {
        if i == 10 {
            continue;
        }
        let mut payload = [0u8; 160];
        Codec::Pcma.encode(frame, &mut payload);
        let pkt = rtp_packet(i == 0, 8, i as u16, 160 * i as u32, 9, &payload);
        ph.send_to(&pkt, leg.local_addr()).await.unwrap();
        if i == 20 {
            ph.send_to(&pkt, leg.local_addr()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    leg.stop_recording();
    let mut samples = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(s) = crate::wav::load_wav_8k(&path) {
            if s.len() == 8000 {
                samples = s;
                break;
            }
        }
    }
    assert_eq!(samples.len(), 8000, "1 s of 8 kHz audio");
    let mut a = [0u8; 160];
    let mut d = [0i16; 160];
    for i in [0usize, 9, 11, 49] {
        Codec::Pcma.encode(&pcm[i * 160..(i + 1) * 160], &mut a);
        Codec::Pcma.decode(&a, &mut d);
        assert_eq!(&samples[i * 160..(i + 1) * 160], &d[..], "frame {i}");
    }
    assert!(
        samples[1600..1760].iter().all(|&v| v == 0),
        "lost frame is silence"
    );
    let st = leg.stats();
    assert_eq!(
        st.lost, 0,
        "duplicate fills the count; loss accounting is expected - received"
    );
    assert_eq!(st.late_frames, 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn stats_count_loss_and_reordering() {
    let eng = engine();
    let leg = eng.allocate().await.unwrap();
    let ph = phone().await;
    leg.set_remote(remote(&ph, Codec::Pcmu, None));
    let payload = [0xFFu8; 160];
    for seq in [1u16, 2, 3, 5, 6, 8, 7, 9] {
        let pkt = rtp_packet(false, 0, seq, seq as u32 * 160, 1, &payload);
        ph.send_to(&pkt, leg.local_addr()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = leg.stats();
    assert_eq!(st.packets_received, 8);
    assert_eq!(st.bytes_received, 8 * 160);
    assert_eq!(st.lost, 1, "seq 4 never came");
    assert_eq!(st.late_frames, 1, "seq 7 after 8");
    assert!(st.jitter_ms > 0.0, "unpaced burst shows jitter");

    // Engine totals include open legs and keep closed legs' counters.
    let t = eng.totals();
    assert_eq!(
        (t.legs, t.packets_received, t.packets_lost, t.late_frames),
        (1, 8, 1, 1)
    );
    assert_eq!(t.bytes_received, 8 * 160);
    drop(leg);
    let mut t = eng.totals();
    for _ in 0..100 {
        if t.legs == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        t = eng.totals();
    }
    assert_eq!((t.legs, t.packets_received, t.packets_lost), (0, 8, 1));
}

#[tokio::test]
async fn latching_ignores_other_sources_and_garbage() {
    let eng = engine();
    let mut leg = eng.allocate().await.unwrap();
    let mut events = leg.take_events().unwrap();
    let nat_phone = phone().await;
    let intruder = phone().await;
    // SDP says one address (a private IP behind NAT); packets come from another.
    leg.set_remote(RemoteMedia {
        addr: "127.0.0.1:9".parse().unwrap(),
        codec: Codec::Pcmu,
        pt: 0,
        telephone_event_pt: Some(101),
    });
    let to = leg.local_addr();
    // Garbage and RTCP first: must be ignored without latching.
    for junk in [
        &b""[..],
        &[0x80][..],
        &[0xFF; 40][..],
        &[0x80, 200, 0, 6, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12][..],
        &[0x9F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        &[0x80, 13, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0][..], // comfort noise
    ] {
        intruder.send_to(junk, to).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(leg.stats().packets_received, 0);

    send_audio(&nat_phone, to, Codec::Pcmu, &[0i16; 160], 1, 1, false).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Intruder's DTMF is ignored after latching.
    let ev = TelephoneEvent {
        event: 3,
        end: false,
        volume: 10,
        duration: 160,
    };
    intruder
        .send_to(&rtp_packet(true, 101, 1, 1, 2, &ev.to_bytes()), to)
        .await
        .unwrap();
    assert!(next_event(&mut events, Duration::from_millis(200))
        .await
        .is_none());
    assert_eq!(leg.stats().packets_received, 1);
    // Playback goes to the latched source, not the SDP address.
    leg.play(tone(160, 300.0, 1000.0).into());
    assert!(recv(&nat_phone, Duration::from_secs(1)).await.is_some());
    assert!(recv(&intruder, Duration::from_millis(100)).await.is_none());
}

#[tokio::test]
async fn send_dtmf_rfc4733_and_inband() {
    let eng = engine();
    let leg = eng.allocate().await.unwrap();
    let ph = phone().await;
    leg.set_remote(remote(&ph, Codec::Pcmu, Some(101)));
    leg.send_dtmf('7');
    leg.send_dtmf('x'); // ignored
    let mut pkts = Vec::new();
    while let Some(raw) = recv(&ph, Duration::from_millis(200)).await {
        pkts.push(raw);
    }
    assert_eq!(pkts.len(), 7);
    let parsed: Vec<RtpPacket<'_>> = pkts.iter().map(|r| RtpPacket::parse(r).unwrap()).collect();
    let ts = parsed[0].timestamp;
    for (i, p) in parsed.iter().enumerate() {
        assert_eq!(p.payload_type, 101);
        assert_eq!(p.timestamp, ts);
        assert_eq!(p.marker, i == 0);
        assert_eq!(p.sequence, parsed[0].sequence.wrapping_add(i as u16));
        let ev = TelephoneEvent::parse(p.payload).unwrap();
        assert_eq!(ev.event, 7);
        assert_eq!(ev.end, i >= 4);
    }

    // Without telephone-event: in-band tones the Goertzel detector recognises.
    leg.set_remote(remote(&ph, Codec::Pcmu, None));
    leg.send_dtmf('4');
    leg.send_dtmf('4');
    let mut pcm = Vec::new();
    while let Some(raw) = recv(&ph, Duration::from_millis(200)).await {
        let p = RtpPacket::parse(&raw).unwrap();
        assert_eq!(p.payload_type, 0);
        let mut d = [0i16; 160];
        let n = Codec::Pcmu.decode(p.payload, &mut d);
        pcm.extend_from_slice(&d[..n]);
    }
    assert_eq!(pcm.len(), 2 * (INBAND_TONE_SAMPLES + INBAND_GAP_SAMPLES));
    let mut det = GoertzelDetector::new();
    let mut digits = Vec::new();
    det.process(&pcm, |c| digits.push(c));
    assert_eq!(digits, ['4', '4']);
}

#[tokio::test]
async fn inband_detection_of_received_audio() {
    let eng = engine();
    let mut leg = eng.allocate().await.unwrap();
    let mut events = leg.take_events().unwrap();
    let ph = phone().await;
    leg.set_remote(remote(&ph, Codec::Pcma, None));
    leg.set_inband_detection(true);
    let mut pcm = vec![0i16; 800];
    pcm.extend(dtmf::generate_dtmf('9', 800, 6000).unwrap());
    pcm.extend(vec![0i16; 800]);
    pcm.extend(dtmf::generate_dtmf('*', 800, 6000).unwrap());
    pcm.extend(vec![0i16; 800]);
    send_audio(&ph, leg.local_addr(), Codec::Pcma, &pcm, 1, 1, false).await;
    let mut got = Vec::new();
    while let Some(ev) = next_event(&mut events, Duration::from_millis(300)).await {
        got.push(ev);
    }
    let inband = |digit| MediaEvent::Dtmf {
        digit,
        source: DtmfSource::Inband,
    };
    assert_eq!(got, vec![inband('9'), inband('*')]);
}

#[tokio::test]
async fn rtp_timeout_fires_once_and_rearms() {
    let eng = engine();
    let mut leg = eng.allocate().await.unwrap();
    let mut events = leg.take_events().unwrap();
    let ph = phone().await;
    leg.set_remote(remote(&ph, Codec::Pcmu, None));
    leg.set_rtp_timeout(Some(Duration::from_millis(150)));
    // Not before the first packet.
    assert!(next_event(&mut events, Duration::from_millis(300))
        .await
        .is_none());
    send_audio(
        &ph,
        leg.local_addr(),
        Codec::Pcmu,
        &[0i16; 160],
        1,
        1,
        false,
    )
    .await;
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Some(MediaEvent::RtpTimeout)
    );
    assert!(next_event(&mut events, Duration::from_millis(300))
        .await
        .is_none());
    send_audio(
        &ph,
        leg.local_addr(),
        Codec::Pcmu,
        &[0i16; 160],
        2,
        161,
        false,
    )
    .await;
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Some(MediaEvent::RtpTimeout)
    );
    // On hold: no timeout.
    let mut hold = remote(&ph, Codec::Pcmu, None);
    hold.addr = "0.0.0.0:4000".parse().unwrap();
    leg.set_remote(hold);
    send_audio(
        &ph,
        leg.local_addr(),
        Codec::Pcmu,
        &[0i16; 160],
        3,
        321,
        false,
    )
    .await;
    assert!(next_event(&mut events, Duration::from_millis(400))
        .await
        .is_none());
    // Resuming long after the last packet gives the peer a full period again.
    leg.set_remote(remote(&ph, Codec::Pcmu, None));
    assert!(next_event(&mut events, Duration::from_millis(100))
        .await
        .is_none());
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Some(MediaEvent::RtpTimeout)
    );
}

#[tokio::test]
async fn hold_stops_sending_and_resume_restarts() {
    let eng = engine();
    let mut leg = eng.allocate().await.unwrap();
    let mut events = leg.take_events().unwrap();
    let ph = phone().await;
    let mut hold = remote(&ph, Codec::Pcmu, None);
    hold.addr = "0.0.0.0:0".parse().unwrap();
    leg.set_remote(hold);
    let id = leg.play(tone(800, 400.0, 3000.0).into());
    assert!(recv(&ph, Duration::from_millis(200)).await.is_none());
    assert_eq!(
        next_event(&mut events, Duration::from_secs(1)).await,
        Some(MediaEvent::PlayFinished {
            id,
            completed: true
        })
    );
    leg.set_remote(remote(&ph, Codec::Pcmu, None));
    leg.play(tone(160, 400.0, 3000.0).into());
    assert!(recv(&ph, Duration::from_secs(1)).await.is_some());

    // Negotiated hold maps to an unspecified address.
    let n = crate::sdp::negotiate(
        &crate::sdp::SessionDescription::parse(
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\na=sendonly\r\n",
        )
        .unwrap(),
    )
    .unwrap();
    let r = RemoteMedia::from(&n);
    assert!(r.addr.ip().is_unspecified());
    assert_eq!(r.codec, Codec::Pcmu);
}

#[tokio::test]
async fn playback_to_bridged_leg_takes_precedence() {
    let eng = engine();
    let leg_a = eng.allocate().await.unwrap();
    let mut leg_b = eng.allocate().await.unwrap();
    let mut events_b = leg_b.take_events().unwrap();
    let phone_a = phone().await;
    let phone_b = phone().await;
    leg_a.set_remote(remote(&phone_a, Codec::Pcmu, None));
    leg_b.set_remote(remote(&phone_b, Codec::Pcmu, None));
    leg_a.bridge(&leg_b);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // B plays an announcement while A's audio is relayed to B: B hears only the
    // announcement, in one continuous stream.
    let id = leg_b.play(tone(1600, 600.0, 4000.0).into());
    let relay_task = async {
        let pcm = vec![1000i16; 3200];
        send_audio(&phone_a, leg_a.local_addr(), Codec::Pcmu, &pcm, 1, 1, true).await;
    };
    let collect = async {
        let mut v = Vec::new();
        while let Some(raw) = recv(&phone_b, Duration::from_millis(300)).await {
            v.push(raw);
        }
        v
    };
    let ((), got) = tokio::join!(relay_task, collect);
    assert_eq!(
        next_event(&mut events_b, Duration::from_secs(1)).await,
        Some(MediaEvent::PlayFinished {
            id,
            completed: true
        })
    );
    let parsed: Vec<RtpPacket<'_>> = got.iter().map(|r| RtpPacket::parse(r).unwrap()).collect();
    assert!(parsed.len() >= 15, "{} packets", parsed.len());
    let ssrc = parsed[0].ssrc;
    for w in parsed.windows(2) {
        assert_eq!(w[1].ssrc, ssrc);
        assert_eq!(
            w[1].sequence,
            w[0].sequence.wrapping_add(1),
            "no interleaving"
        );
    }
    let relayed_constant =
        |p: &RtpPacket<'_>| p.payload.iter().all(|&b| b == g711::linear_to_ulaw(1000));
    // The first 10 packets are the announcement, the rest relayed audio.
    assert!(parsed[..10].iter().all(|p| !relayed_constant(p)));
    assert!(parsed[10..].iter().all(relayed_constant));
}

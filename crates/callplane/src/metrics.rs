//! `/metrics`: the engine's, the SIP server's and the media engine's figures, read on each
//! scrape and encoded with prometheus-client (OpenMetrics text). The components keep their
//! own lock-free counters and hand out plain snapshots; only this module knows Prometheus.

use std::fmt;
use std::sync::OnceLock;

use callplane_api::prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use callplane_api::prometheus_client::metrics::MetricType;
use callplane_engine::webhook::WebhookSeries;
use callplane_engine::Engine;
use callplane_media::session::{RoomTotals, TICK_BUCKETS};
use callplane_media::MediaEngine;
use callplane_sip::listen::ConnectionCounter;
use callplane_sip::SipServer;

/// The running components, as `/metrics` reads them.
pub struct Metrics {
    pub engine: Engine,
    pub sip: SipServer,
    pub media: MediaEngine,
    /// Set once the HTTP listener is bound (it is made after its metrics source).
    pub http_connections: OnceLock<ConnectionCounter>,
}

/// Everything one scrape reports, read from the components at once.
#[derive(Debug, Default)]
struct Snapshot {
    /// `(name, help, value)`.
    gauges: Vec<(&'static str, &'static str, u64)>,
    /// `(name without _total, help, value)`.
    counters: Vec<(&'static str, &'static str, u64)>,
    webhooks: Vec<WebhookSeries>,
    /// `(event type, hangup cause or "", count)`.
    events: Vec<(&'static str, String, u64)>,
    rooms: RoomTotals,
}

impl Metrics {
    fn snapshot(&self) -> Snapshot {
        let m = self.media.totals();
        let r = self.media.room_totals();
        let (invites_dropped, invites_held) = self.sip.failed_invites();
        Snapshot {
            gauges: vec![
                (
                    "callplane_calls_active",
                    "Calls in progress",
                    self.engine.active_calls() as u64,
                ),
                (
                    "callplane_sip_dialogs",
                    "Live SIP dialogs",
                    self.sip.dialog_count() as u64,
                ),
                (
                    "callplane_sip_tcp_connections",
                    "Open SIP/TCP connections",
                    self.sip.tcp_connections() as u64,
                ),
                (
                    "callplane_http_connections",
                    "Open HTTP connections",
                    self.http_connections.get().map_or(0, |c| c.open()) as u64,
                ),
                (
                    "callplane_sip_failed_invites_held",
                    "Failed INVITE transactions held (waiting for ACK or Timer H)",
                    invites_held as u64,
                ),
                (
                    "callplane_sip_transactions",
                    "Running SIP transactions",
                    self.sip.running_transactions() as u64,
                ),
                ("callplane_rtp_legs", "Open RTP legs", m.legs),
                ("callplane_rooms", "Rooms open (conferences)", r.rooms),
                ("callplane_room_members", "Call legs in rooms", r.members),
            ],
            counters: vec![
                (
                    "callplane_calls_finished",
                    "Calls finished since start",
                    self.engine.finished_calls(),
                ),
                (
                    "callplane_sip_failed_invites_dropped",
                    "INVITEs that would fail dropped unanswered (failed-INVITE limits)",
                    invites_dropped,
                ),
                (
                    "callplane_rtp_packets_received",
                    "RTP packets received",
                    m.packets_received,
                ),
                (
                    "callplane_rtp_packets_sent",
                    "RTP packets sent",
                    m.packets_sent,
                ),
                (
                    "callplane_rtp_packets_lost",
                    "RTP packets lost (sequence gaps)",
                    m.packets_lost,
                ),
                (
                    "callplane_rtp_late_frames",
                    "RTP frames that arrived late or out of order",
                    m.late_frames,
                ),
                (
                    "callplane_room_ticks",
                    "Mixing ticks run by rooms (20 ms each)",
                    r.ticks,
                ),
                (
                    "callplane_room_mixed_frames_sent",
                    "Mixed frames sent to room members",
                    r.mixed_frames_sent,
                ),
                (
                    "callplane_room_send_errors",
                    "Mixed frames whose send failed",
                    r.send_errors,
                ),
            ],
            webhooks: self.engine.webhook_series(),
            events: self.engine.event_counts(),
            rooms: r,
        }
    }
}

impl callplane_api::MetricsSource for Metrics {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.snapshot().encode(encoder)
    }
}

impl Snapshot {
    fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        for (name, help, v) in &self.gauges {
            enc.encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(v)?;
        }
        for (name, help, v) in &self.counters {
            enc.encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
        {
            let mut m = enc.encode_descriptor(
                "callplane_webhook_requests",
                "Webhook requests by tenant, kind and outcome",
                None,
                MetricType::Counter,
            )?;
            for s in &self.webhooks {
                for (outcome, n) in &s.outcomes {
                    let labels = [
                        ("tenant", s.tenant.as_str()),
                        ("kind", s.kind),
                        ("outcome", outcome),
                    ];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(n, None)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "callplane_webhook_duration_seconds",
                "Time from sending a webhook request to its answer (or failure)",
                None,
                MetricType::Histogram,
            )?;
            for s in &self.webhooks {
                let labels = [("tenant", s.tenant.as_str()), ("kind", s.kind)];
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "callplane_call_events",
                "Call events published on the event bus",
                None,
                MetricType::Counter,
            )?;
            for (kind, cause, n) in &self.events {
                if cause.is_empty() {
                    m.encode_family(&[("type", *kind)])?
                        .encode_counter::<NoLabelSet, _, u64>(n, None)?;
                } else {
                    m.encode_family(&[("type", *kind), ("cause", cause.as_str())])?
                        .encode_counter::<NoLabelSet, _, u64>(n, None)?;
                }
            }
        }
        let r = &self.rooms;
        let mut buckets: Vec<(f64, u64)> = TICK_BUCKETS
            .iter()
            .copied()
            .zip(r.tick_buckets.iter().copied())
            .collect();
        buckets.push((f64::INFINITY, r.tick_buckets[TICK_BUCKETS.len()]));
        let count = r.tick_buckets.iter().sum();
        enc.encode_descriptor(
            "callplane_room_tick_seconds",
            "Duration of a room's mixing tick, from its start to the last mix sent",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(r.tick_seconds_sum, count, &buckets, None)?;
        let mut m = enc.encode_descriptor(
            "callplane_room_frames_dropped",
            "Member frames a room dropped: its queue for the member was full, or the member's \
             jitter queue was trimmed",
            None,
            MetricType::Counter,
        )?;
        m.encode_family(&[("reason", "queue_full")])?
            .encode_counter::<NoLabelSet, _, u64>(&r.frames_dropped_queue_full, None)?;
        m.encode_family(&[("reason", "jitter_trim")])?
            .encode_counter::<NoLabelSet, _, u64>(&r.frames_dropped_jitter, None)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callplane_api::prometheus_client::collector::Collector;
    use callplane_api::prometheus_client::encoding::text::encode;
    use callplane_api::prometheus_client::registry::Registry;

    #[derive(Debug)]
    struct Fixed(std::sync::Mutex<Option<Snapshot>>);

    impl Collector for Fixed {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
            self.0.lock().unwrap().as_ref().unwrap().encode(&mut enc)
        }
    }

    fn render(s: Snapshot) -> String {
        let mut reg = Registry::default();
        reg.register_collector(Box::new(Fixed(std::sync::Mutex::new(Some(s)))));
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn series_keep_their_names_labels_and_cumulative_buckets() {
        let mut tick_buckets = [0; TICK_BUCKETS.len() + 1];
        tick_buckets[0] = 2;
        tick_buckets[4] = 1;
        tick_buckets[TICK_BUCKETS.len()] = 1;
        let mut webhook_buckets: Vec<(f64, u64)> = vec![(0.005, 1), (5.0, 1)];
        webhook_buckets.push((f64::INFINITY, 0));
        let out = render(Snapshot {
            gauges: vec![("callplane_calls_active", "Calls in progress", 3)],
            counters: vec![("callplane_calls_finished", "Calls finished", 7)],
            webhooks: vec![WebhookSeries {
                tenant: "a\"b\\c".into(),
                kind: "call_control",
                outcomes: vec![("ok", 1), ("timeout", 1)],
                buckets: webhook_buckets,
                sum: 5.003,
                count: 2,
            }],
            events: vec![
                ("call.answered", String::new(), 4),
                ("call.hangup", "NORMAL_CLEARING".into(), 5),
            ],
            rooms: RoomTotals {
                tick_buckets,
                tick_seconds_sum: 0.03078,
                frames_dropped_queue_full: 2,
                frames_dropped_jitter: 1,
                ..RoomTotals::default()
            },
        });
        for line in [
            "# TYPE callplane_calls_active gauge",
            "callplane_calls_active 3",
            "# TYPE callplane_calls_finished counter",
            "callplane_calls_finished_total 7",
            // Label order and escaping as the e2e tests and dashboards read them.
            "callplane_webhook_requests_total{tenant=\"a\\\"b\\\\c\",kind=\"call_control\",outcome=\"timeout\"} 1",
            "callplane_webhook_duration_seconds_bucket{le=\"5.0\",tenant=\"a\\\"b\\\\c\",kind=\"call_control\"} 2",
            "callplane_webhook_duration_seconds_bucket{le=\"+Inf\",tenant=\"a\\\"b\\\\c\",kind=\"call_control\"} 2",
            "callplane_webhook_duration_seconds_count{tenant=\"a\\\"b\\\\c\",kind=\"call_control\"} 2",
            "callplane_call_events_total{type=\"call.answered\"} 4",
            "callplane_call_events_total{type=\"call.hangup\",cause=\"NORMAL_CLEARING\"} 5",
            "# TYPE callplane_room_tick_seconds histogram",
            "callplane_room_tick_seconds_bucket{le=\"0.001\"} 3",
            "callplane_room_tick_seconds_bucket{le=\"0.02\"} 3",
            "callplane_room_tick_seconds_bucket{le=\"+Inf\"} 4",
            "callplane_room_tick_seconds_count 4",
            "callplane_room_tick_seconds_sum 0.03078",
            "callplane_room_frames_dropped_total{reason=\"queue_full\"} 2",
            "callplane_room_frames_dropped_total{reason=\"jitter_trim\"} 1",
            "# EOF",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}

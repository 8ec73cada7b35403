//! Prometheus metrics, in the text exposition format, served on an opt-in
//! address (`[agent] metrics_listen`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::views::StatusView;
use crate::ban::{BanEvent, BanEventKind};

/// Ban latency buckets (seconds): from a line being read to its ban's map
/// entry, typically well under a millisecond.
const LATENCY_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// One per-family figure of the fast path.
type FamilyField = fn(&crate::enforce::xdp::FastPathFamily) -> usize;

/// What the daemon counts itself (the rest comes from the core's status).
#[derive(Debug, Default)]
pub struct Metrics {
    bans: BTreeMap<(String, &'static str), u64>,
    unbans: BTreeMap<(String, &'static str), u64>,
    latency_buckets: [u64; LATENCY_BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
    /// Source counters, by jail: lines truncated, non-UTF-8 lines.
    pub source_errors: BTreeMap<String, (u64, u64)>,
}

impl Metrics {
    pub fn record_event(&mut self, ev: &BanEvent) {
        let key = (ev.record.jail.clone(), ev.record.class.as_str());
        let map = match ev.kind {
            BanEventKind::Ban => &mut self.bans,
            BanEventKind::Unban => &mut self.unbans,
        };
        *map.entry(key).or_default() += 1;
    }

    pub fn record_latency(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.latency_buckets[i] += 1;
            }
        }
        self.latency_count += 1;
        self.latency_sum += s;
    }

    /// The exposition text: the daemon's counters plus a status snapshot.
    pub fn render(&self, status: &StatusView, map_capacity: u64) -> String {
        let mut o = String::new();
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut o,
            "xban_lines_read_total",
            "counter",
            "Log lines read, per jail.",
        );
        for j in &status.jails {
            let _ = writeln!(
                o,
                "xban_lines_read_total{{jail=\"{}\"}} {}",
                j.name, j.counters.lines
            );
        }
        family(
            &mut o,
            "xban_lines_matched_total",
            "counter",
            "Lines that matched a failregex, per jail.",
        );
        for j in &status.jails {
            let _ = writeln!(
                o,
                "xban_lines_matched_total{{jail=\"{}\"}} {}",
                j.name, j.counters.matched
            );
        }
        family(
            &mut o,
            "xban_parse_errors_total",
            "counter",
            "Lines with a problem, per jail and kind (no_timestamp, truncated, invalid_utf8, backtrack_limit).",
        );
        for j in &status.jails {
            let _ = writeln!(
                o,
                "xban_parse_errors_total{{jail=\"{}\",kind=\"no_timestamp\"}} {}",
                j.name, j.counters.lines_without_time
            );
            let (trunc, utf8) = self.source_errors.get(&j.name).copied().unwrap_or_default();
            let _ = writeln!(
                o,
                "xban_parse_errors_total{{jail=\"{}\",kind=\"truncated\"}} {trunc}",
                j.name
            );
            let _ = writeln!(
                o,
                "xban_parse_errors_total{{jail=\"{}\",kind=\"invalid_utf8\"}} {utf8}",
                j.name
            );
            let _ = writeln!(
                o,
                "xban_parse_errors_total{{jail=\"{}\",kind=\"backtrack_limit\"}} {}",
                j.name, j.counters.backtrack_limit_hits
            );
        }
        family(
            &mut o,
            "xban_failing_addresses",
            "gauge",
            "Addresses with failures in the window, per jail.",
        );
        for j in &status.jails {
            let _ = writeln!(
                o,
                "xban_failing_addresses{{jail=\"{}\"}} {}",
                j.name, j.failing_now
            );
        }
        family(
            &mut o,
            "xban_window_evictions_total",
            "counter",
            "Addresses a jail stopped counting because it tracked max_tracked already.",
        );
        for j in &status.jails {
            let _ = writeln!(
                o,
                "xban_window_evictions_total{{jail=\"{}\"}} {}",
                j.name, j.counters.window_evictions
            );
        }
        family(
            &mut o,
            "xban_connection_evictions_total",
            "counter",
            "Connections (<F-MLFID>) a jail's filter stopped following before they ended: its table was full.",
        );
        for j in &status.jails {
            let _ = writeln!(
                o,
                "xban_connection_evictions_total{{jail=\"{}\"}} {}",
                j.name, j.counters.connection_evictions
            );
        }
        family(
            &mut o,
            "xban_ban_refusals_total",
            "counter",
            "Bans refused by the guard, per rule (min_prefix, allowlist, host_address) and origin.",
        );
        for r in &status.ban_refusals {
            let _ = writeln!(
                o,
                "xban_ban_refusals_total{{rule=\"{}\",origin=\"{}\"}} {}",
                r.rule, r.origin, r.count
            );
        }
        family(
            &mut o,
            "xban_bans_total",
            "counter",
            "Bans made since start, per jail and class.",
        );
        for ((jail, class), n) in &self.bans {
            let _ = writeln!(
                o,
                "xban_bans_total{{jail=\"{jail}\",class=\"{class}\"}} {n}"
            );
        }
        family(
            &mut o,
            "xban_unbans_total",
            "counter",
            "Bans ended since start, per jail and class.",
        );
        for ((jail, class), n) in &self.unbans {
            let _ = writeln!(
                o,
                "xban_unbans_total{{jail=\"{jail}\",class=\"{class}\"}} {n}"
            );
        }
        family(
            &mut o,
            "xban_bans_active",
            "gauge",
            "Banned addresses and prefixes now, per class.",
        );
        let _ = writeln!(o, "xban_bans_active{{class=\"drop\"}} {}", status.bans_drop);
        let _ = writeln!(
            o,
            "xban_bans_active{{class=\"tarpit\"}} {}",
            status.bans_tarpit
        );
        family(
            &mut o,
            "xban_map_entries",
            "gauge",
            "Entries in the XDP ban tries.",
        );
        let _ = writeln!(o, "xban_map_entries {}", status.map_entries);
        family(
            &mut o,
            "xban_map_capacity",
            "gauge",
            "Capacity of the XDP ban tries (each family).",
        );
        let _ = writeln!(o, "xban_map_capacity {map_capacity}");
        if let Some(x) = &status.xdp {
            family(
                &mut o,
                "xban_xdp_packets_total",
                "counter",
                "Packets seen by XDP, per verdict.",
            );
            for (k, v) in x.named() {
                let _ = writeln!(o, "xban_xdp_packets_total{{verdict=\"{k}\"}} {v}");
            }
        }
        if let Some(fp) = &status.fast_path {
            let rows: [(&str, &str, FamilyField); 8] = [
                (
                    "xban_fastpath_capacity",
                    "Bans the XDP fast path holds at most ([agent] fast_path_capacity), per family.",
                    |f| f.capacity,
                ),
                (
                    "xban_fastpath_table_entries",
                    "Bans in the XDP exact-match bucket table, per family.",
                    |f| f.table_entries,
                ),
                (
                    "xban_fastpath_table_capacity",
                    "Capacity of the XDP bucket table, per family.",
                    |f| f.table_capacity,
                ),
                (
                    "xban_fastpath_overflow_entries",
                    "Bans in the XDP overflow hash (bucket full), per family.",
                    |f| f.overflow_entries,
                ),
                (
                    "xban_fastpath_overflow_capacity",
                    "Capacity of the XDP overflow hash, per family.",
                    |f| f.overflow_capacity,
                ),
                (
                    "xban_fastpath_trie_only",
                    "Bans the fast path could not hold, enforced from the ban trie, per family.",
                    |f| f.trie_only,
                ),
                (
                    "xban_fastpath_fallback_regions",
                    "Directory regions whose sources are looked up in the ban trie, per family.",
                    |f| f.fallback_regions,
                ),
                (
                    "xban_fastpath_trie_pending",
                    "Bans of a large cold start not yet written into the ban trie (the fast path drops them meanwhile), per family.",
                    |f| f.trie_pending,
                ),
            ];
            for (name, help, get) in rows {
                family(&mut o, name, "gauge", help);
                let _ = writeln!(o, "{name}{{family=\"ipv4\"}} {}", get(&fp.v4));
                let _ = writeln!(o, "{name}{{family=\"ipv6\"}} {}", get(&fp.v6));
            }
        }
        if let Some(links) = &status.links {
            family(
                &mut o,
                "xban_xdp_attached",
                "gauge",
                "1 while the XDP program is attached to the interface through its link.",
            );
            for l in &links.interfaces {
                let _ = writeln!(
                    o,
                    "xban_xdp_attached{{interface=\"{}\"}} {}",
                    l.interface,
                    u8::from(l.is_attached())
                );
            }
            family(
                &mut o,
                "xban_xdp_repairs_total",
                "counter",
                "Repairs of lost XDP attachments and pins, per interface.",
            );
            for l in &links.interfaces {
                let _ = writeln!(
                    o,
                    "xban_xdp_repairs_total{{interface=\"{}\"}} {}",
                    l.interface, l.repairs
                );
            }
            family(
                &mut o,
                "xban_xdp_pin_repairs_total",
                "counter",
                "Times lost pins (maps, program) under the pin directory were re-created.",
            );
            let _ = writeln!(o, "xban_xdp_pin_repairs_total {}", links.pin_repairs);
        }
        if let Some(l) = &status.event_loop {
            family(
                &mut o,
                "xban_event_loop_turns_total",
                "counter",
                "Turns of the agent's event loop (a batch of lines, a request, a tick...).",
            );
            let _ = writeln!(o, "xban_event_loop_turns_total {}", l.turns);
            family(
                &mut o,
                "xban_event_loop_slow_turns_total",
                "counter",
                "Event-loop turns longer than 10 ms: bans wait behind them.",
            );
            let _ = writeln!(o, "xban_event_loop_slow_turns_total {}", l.slow_turns);
            family(
                &mut o,
                "xban_event_loop_slowest_turn_seconds",
                "gauge",
                "The longest event-loop turn since the agent started, per kind of work.",
            );
            for (work, w) in &l.by_work {
                let _ = writeln!(
                    o,
                    "xban_event_loop_slowest_turn_seconds{{work=\"{work}\"}} {}",
                    w.slowest_ms / 1e3
                );
            }
        }
        family(
            &mut o,
            "xban_store_backlog",
            "gauge",
            "Bans in the kernel waiting to be written to the ban database (full disk).",
        );
        let _ = writeln!(o, "xban_store_backlog {}", status.store.backlog);
        family(
            &mut o,
            "xban_store_write_failures_total",
            "counter",
            "Failed writes of bans to the ban database.",
        );
        let _ = writeln!(
            o,
            "xban_store_write_failures_total {}",
            status.store.write_failures
        );
        family(
            &mut o,
            "xban_store_backlog_dropped_total",
            "counter",
            "Bans that left a full backlog unwritten (enforced, not kept over a restart).",
        );
        let _ = writeln!(
            o,
            "xban_store_backlog_dropped_total {}",
            status.store.backlog_dropped
        );
        family(
            &mut o,
            "xban_blocklist_bad_lines",
            "gauge",
            "Lines of the blocklist files skipped at their last read.",
        );
        let _ = writeln!(
            o,
            "xban_blocklist_bad_lines {}",
            status.blocklists.bad_lines
        );
        family(
            &mut o,
            "xban_blocklist_unreadable_files",
            "gauge",
            "Blocklist files whose last read failed (their previous entries are kept).",
        );
        let _ = writeln!(
            o,
            "xban_blocklist_unreadable_files {}",
            status.blocklists.unreadable_files.len()
        );
        family(
            &mut o,
            "xban_ban_latency_seconds",
            "histogram",
            "From the failure line being read to the ban's map entry.",
        );
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "xban_ban_latency_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i]
            );
        }
        let _ = writeln!(
            o,
            "xban_ban_latency_seconds_bucket{{le=\"+Inf\"}} {}",
            self.latency_count
        );
        let _ = writeln!(o, "xban_ban_latency_seconds_sum {}", self.latency_sum);
        let _ = writeln!(o, "xban_ban_latency_seconds_count {}", self.latency_count);
        if let Some(drops) = status.geo.as_ref().map(|g| &g.dropped_packets) {
            family(
                &mut o,
                "xban_geo_dropped_packets_total",
                "counter",
                "Packets dropped at XDP from inside geo rule prefixes, per country (or AS) of the prefix.",
            );
            for (label, n) in drops {
                let _ = writeln!(
                    o,
                    "xban_geo_dropped_packets_total{{country=\"{label}\"}} {n}"
                );
            }
        }
        o
    }
}

/// Serve `GET /metrics` on `listener`, asking `fetch` for the text.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tx: tokio::sync::mpsc::Sender<crate::api::protocol::ControlMessage>,
) {
    serve_with(listener, tx, LIMITS).await
}

/// Scrapes served at once; a scraper holds one connection at a time.
pub const LIMITS: crate::api::conn_limit::Limits = crate::api::conn_limit::Limits {
    max_connections: 16,
    request_timeout: Duration::from_secs(5),
};

pub async fn serve_with(
    listener: tokio::net::TcpListener,
    tx: tokio::sync::mpsc::Sender<crate::api::protocol::ControlMessage>,
    limits: crate::api::conn_limit::Limits,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limiter = crate::api::conn_limit::Limiter::new(limits);
    let mut backoff = crate::api::conn_limit::AcceptBackoff::default();
    loop {
        let mut slot = limiter.slot().await;
        let mut stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                backoff.failed("metrics listener", &e).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match slot.read_request(stream.read(&mut buf)).await {
                Ok(n) => n,
                Err(_) => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ")
            {
                let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
                let msg = crate::api::protocol::ControlMessage {
                    request: crate::api::protocol::Request::Metrics,
                    reply: reply_tx,
                };
                match tx.send(msg).await {
                    Ok(()) => match reply_rx.await {
                        Ok(r) if r.ok => {
                            ("200 OK", r.data.as_str().unwrap_or_default().to_string())
                        }
                        _ => ("503 Service Unavailable", "agent busy\n".to_string()),
                    },
                    Err(_) => ("503 Service Unavailable", "agent stopping\n".to_string()),
                }
            } else {
                ("404 Not Found", "only GET /metrics is served\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                stream.write_all(response.as_bytes()),
            )
            .await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut m = Metrics::default();
        m.record_latency(Duration::from_micros(50));
        m.record_latency(Duration::from_micros(700));
        m.record_latency(Duration::from_secs(2));
        assert_eq!(m.latency_buckets[0], 1);
        assert_eq!(m.latency_buckets[3], 2, "<= 1 ms");
        assert_eq!(m.latency_buckets[9], 2, "<= 1 s");
        assert_eq!(m.latency_count, 3);
    }

    #[test]
    fn fast_path_occupancy_and_link_repairs_are_exported() {
        use crate::enforce::xdp::links::{LinkStatus, LinksStatus};
        use crate::enforce::xdp::{FastPathFamily, FastPathStatus};
        let status = StatusView {
            interfaces: vec!["eth9".into()],
            xdp_mode: "native".into(),
            bans_active: 0,
            bans_drop: 0,
            bans_tarpit: 0,
            map_entries: 0,
            xdp: None,
            tarpit: None,
            fast_path: Some(FastPathStatus {
                v4: FastPathFamily {
                    capacity: 12,
                    table_entries: 7,
                    table_capacity: 70,
                    overflow_entries: 3,
                    overflow_capacity: 4,
                    trie_only: 2,
                    fallback_regions: 1,
                    trie_pending: 5,
                },
                v6: FastPathFamily::default(),
            }),
            links: Some(LinksStatus {
                interfaces: vec![
                    LinkStatus {
                        interface: "eth9".into(),
                        state: "attached".into(),
                        ifindex: 9,
                        error: None,
                        repairs: 3,
                        last_repair: None,
                    },
                    LinkStatus {
                        interface: "late0".into(),
                        state: "waiting-for-interface".into(),
                        ifindex: 0,
                        error: None,
                        repairs: 0,
                        last_repair: None,
                    },
                ],
                pin_repairs: 1,
            }),
            jails: Vec::new(),
            store: Default::default(),
            blocklists: Default::default(),
            ban_refusals: Vec::new(),
            dns: Vec::new(),
            dns_unresolved: Vec::new(),
            geo: None,
            bans_by_country: Default::default(),
            fleet: None,
            event_loop: Some(crate::api::views::LoopTurns {
                turns: 9,
                slow_turns: 2,
                slowest_ms: 12.5,
                slowest_work: "status".into(),
                by_work: [
                    (
                        "status".to_string(),
                        crate::api::views::WorkTurns {
                            turns: 3,
                            slowest_ms: 12.5,
                        },
                    ),
                    (
                        "lines".to_string(),
                        crate::api::views::WorkTurns {
                            turns: 6,
                            slowest_ms: 2.0,
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            }),
        };
        let text = Metrics::default().render(&status, 10);
        for line in [
            "xban_fastpath_table_entries{family=\"ipv4\"} 7",
            "xban_fastpath_overflow_entries{family=\"ipv4\"} 3",
            "xban_fastpath_overflow_capacity{family=\"ipv4\"} 4",
            "xban_fastpath_trie_only{family=\"ipv4\"} 2",
            "xban_fastpath_fallback_regions{family=\"ipv4\"} 1",
            "xban_fastpath_trie_pending{family=\"ipv4\"} 5",
            "xban_fastpath_trie_only{family=\"ipv6\"} 0",
            "xban_xdp_attached{interface=\"eth9\"} 1",
            "xban_xdp_attached{interface=\"late0\"} 0",
            "xban_xdp_repairs_total{interface=\"eth9\"} 3",
            "xban_xdp_pin_repairs_total 1",
            "xban_event_loop_turns_total 9",
            "xban_event_loop_slow_turns_total 2",
            "xban_event_loop_slowest_turn_seconds{work=\"status\"} 0.0125",
            "xban_event_loop_slowest_turn_seconds{work=\"lines\"} 0.002",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}

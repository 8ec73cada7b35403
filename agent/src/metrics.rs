//! Prometheus metrics, in the text exposition format, served on an opt-in
//! address (`[agent] metrics_listen`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::agent::{BanEvent, BanEventKind, StatusView};

/// Ban latency buckets (seconds): from a line being read to its ban's map
/// entry, typically well under a millisecond.
const LATENCY_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

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
                j.name, j.counters["lines"]
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
                j.name, j.counters["matched"]
            );
        }
        family(
            &mut o,
            "xban_parse_errors_total",
            "counter",
            "Lines with a problem, per jail and kind (no_timestamp, truncated, invalid_utf8).",
        );
        for j in &status.jails {
            let _ = writeln!(
                o,
                "xban_parse_errors_total{{jail=\"{}\",kind=\"no_timestamp\"}} {}",
                j.name, j.counters["lines_without_time"]
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
            for (k, v) in x.as_object().into_iter().flatten() {
                let _ = writeln!(o, "xban_xdp_packets_total{{verdict=\"{k}\"}} {v}");
            }
        }
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
        if let Some(drops) = status
            .geo
            .as_ref()
            .and_then(|g| g.get("dropped_packets"))
            .and_then(|d| d.as_object())
        {
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
    tx: tokio::sync::mpsc::Sender<crate::control::ControlMessage>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ")
            {
                let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
                let msg = crate::control::ControlMessage {
                    request: crate::control::Request::Metrics,
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
            let _ = stream.write_all(response.as_bytes()).await;
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
}

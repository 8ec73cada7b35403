//! The XDP tarpit's maps, from the agent's side: the engine the program
//! applies to the tarpit class, the token bucket's parameters, the ISN key
//! and the reply counters (see `agent-ebpf/src/tarpit.rs` for what the
//! program answers).
//!
//! The key is generated once (getrandom) and kept in its pinned map, so a
//! restarted agent answers retransmitted SYNs exactly as before. The engine
//! and bucket live in a pinned map too, read by the attached program on every
//! tarpit-class packet: a change takes effect at once, and a stopped agent
//! leaves the tarpit answering.

use anyhow::{bail, Context, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use xban_common::tarpit::{self as common, engine, TarpitCfg, TarpitKey};

use super::steering::{limit_rate, SteeringMode, TarpitConfig};

/// Reply counters summed over CPUs (`xban stats`: `tarpit_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TarpitStats {
    pub synack: u64,
    pub ack: u64,
    pub rst: u64,
    pub ignored: u64,
    pub over_limit: u64,
    pub not_tcp: u64,
    pub unanswerable: u64,
    pub passed_nd: u64,
}

/// The tarpit's maps, owned by the running agent.
pub struct TarpitMaps {
    cfg: Array<MapData, TarpitCfg>,
    key: Array<MapData, TarpitKey>,
    stats: PerCpuArray<MapData, u64>,
}

/// What the program does with the tarpit class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Dropped at XDP (no tarpit works, or tarpit disabled).
    Drop,
    /// Passed; iptables steers it.
    Pass,
    /// Answered by the XDP program.
    Xdp,
}

impl Engine {
    /// The engine that goes with what steering set up.
    pub fn of(mode: &SteeringMode) -> Engine {
        match mode {
            m if m.is_active() => Engine::Pass,
            SteeringMode::Xdp => Engine::Xdp,
            _ => Engine::Drop,
        }
    }

    fn value(self) -> u32 {
        match self {
            Engine::Drop => engine::DROP,
            Engine::Pass => engine::PASS,
            Engine::Xdp => engine::XDP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Drop => "none (dropped in XDP)",
            Engine::Pass => "iptables",
            Engine::Xdp => "xdp",
        }
    }
}

/// `limit`/`burst` as per-CPU bucket parameters (cost, cap) in ns.
pub fn bucket_of(cfg: &TarpitConfig, cpus: u64) -> Result<(u64, u64), String> {
    let (count, secs) = limit_rate(&cfg.limit).map_err(|e| format!("tarpit.limit: {e}"))?;
    Ok(common::bucket_params(
        count,
        secs * 1_000_000_000,
        u64::from(cfg.burst),
        cpus,
    ))
}

impl TarpitMaps {
    /// The maps by name (`get` as in `XdpMaps::assemble`).
    pub fn assemble(mut get: impl FnMut(&str) -> Result<Map>) -> Result<TarpitMaps> {
        Ok(TarpitMaps {
            cfg: get(common::MAP_CFG)?.try_into()?,
            key: get(common::MAP_KEY)?.try_into()?,
            stats: get(common::MAP_STATS)?.try_into()?,
        })
    }

    /// Keep the pinned key, or make one (all zero: a fresh map).
    pub fn ensure_key(&mut self) -> Result<()> {
        let have = self.key.get(&0, 0).context("read the tarpit key")?;
        if have != TarpitKey::default() {
            return Ok(());
        }
        let mut bytes = [0u8; 16];
        getrandom(&mut bytes)?;
        let key = TarpitKey {
            k0: u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes")),
            k1: u64::from_ne_bytes(bytes[8..].try_into().expect("8 bytes")),
        };
        self.key.set(0, key, 0).context("write the tarpit key")?;
        tracing::info!("generated the tarpit's ISN key");
        Ok(())
    }

    /// The key in use (tests compare it across restarts).
    pub fn key(&self) -> Result<TarpitKey> {
        Ok(self.key.get(&0, 0)?)
    }

    /// Set the engine and the bucket in one write (the program reads the
    /// value whole).
    pub fn configure(&mut self, engine: Engine, cfg: &TarpitConfig) -> Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("count the possible CPUs")? as u64;
        let (cost_ns, cap_ns) = bucket_of(cfg, cpus).map_err(anyhow::Error::msg)?;
        let value = TarpitCfg {
            engine: engine.value(),
            reserved: 0,
            cost_ns,
            cap_ns,
        };
        self.cfg.set(0, value, 0).context("write tarpit_cfg")?;
        tracing::debug!(
            engine = engine.name(),
            cost_ns,
            cap_ns,
            cpus,
            "tarpit map configured"
        );
        Ok(())
    }

    pub fn stats(&self) -> Result<TarpitStats> {
        stats_of(&self.stats)
    }
}

pub fn stats_of(map: &PerCpuArray<MapData, u64>) -> Result<TarpitStats> {
    let mut c = [0u64; common::stats::COUNT as usize];
    for (i, slot) in c.iter_mut().enumerate() {
        let per_cpu = map.get(&(i as u32), 0).context("read tarpit stats")?;
        *slot = per_cpu.iter().sum();
    }
    use common::stats as s;
    Ok(TarpitStats {
        synack: c[s::SYNACK as usize],
        ack: c[s::ACK as usize],
        rst: c[s::RST as usize],
        ignored: c[s::IGNORED as usize],
        over_limit: c[s::OVER_LIMIT as usize],
        not_tcp: c[s::NOT_TCP as usize],
        unanswerable: c[s::UNANSWERABLE as usize],
        passed_nd: c[s::PASSED_ND as usize],
    })
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("getrandom for the tarpit key");
        }
        if n == 0 {
            bail!("getrandom returned no bytes");
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use xban_common::tarpit::{bucket_params, isn_v4, isn_v6, take_token, TokenBucket};

    #[test]
    fn bucket_params_split_rate_and_burst_over_cpus() {
        let cfg = TarpitConfig::default(); // 10/sec, burst 20
                                           // One CPU: a reply per 100 ms, 20 at once.
        assert_eq!(bucket_of(&cfg, 1).unwrap(), (100_000_000, 2_000_000_000));
        // Two: each refills at 5/sec (200 ms) and holds 10.
        assert_eq!(bucket_of(&cfg, 2).unwrap(), (200_000_000, 2_000_000_000));
        // Burst below the CPU count: each CPU still holds one reply.
        assert_eq!(
            bucket_params(10, 1_000_000_000, 1, 4),
            (400_000_000, 400_000_000)
        );
        let per_min = TarpitConfig {
            limit: "3/minute".into(),
            ..TarpitConfig::default()
        };
        assert_eq!(bucket_of(&per_min, 1).unwrap().0, 20_000_000_000);
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let (cost, cap) = bucket_params(10, 1_000_000_000, 5, 1);
        let mut b = TokenBucket::default();
        let t0 = 1_000_000;
        let burst = (0..100)
            .filter(|_| take_token(&mut b, t0, cost, cap))
            .count();
        assert_eq!(burst, 5, "a fresh bucket holds `burst`");
        // One second later: ten more, not fifteen (refill is capped).
        let mut t = t0;
        let mut n = 0;
        for _ in 0..1000 {
            t += 1_000_000; // 1 ms steps over a second
            n += usize::from(take_token(&mut b, t, cost, cap));
        }
        assert_eq!(n, 10);
        // A long pause refills to the cap only.
        let n = (0..100)
            .filter(|_| take_token(&mut b, t + 3_600_000_000_000, cost, cap))
            .count();
        assert_eq!(n, 5);
        // A clock that steps back grants nothing extra.
        assert!(!take_token(&mut b, 1, cost, cap));
    }

    #[test]
    fn isn_depends_on_key_and_whole_tuple() {
        let k = TarpitKey { k0: 1, k1: 2 };
        let (a4, b4, c4) = (0xc633_6401u32, 0xc633_6402u32, 0xc633_6403u32);
        let a = isn_v4(&k, a4, b4, 22, 40000);
        assert_eq!(a, isn_v4(&k, a4, b4, 22, 40000));
        for other in [
            isn_v4(&TarpitKey { k0: 1, k1: 3 }, a4, b4, 22, 40000),
            isn_v4(&k, a4, c4, 22, 40000),
            isn_v4(&k, a4, b4, 23, 40000),
            isn_v4(&k, a4, b4, 22, 40001),
            isn_v4(&k, b4, a4, 22, 40000),
        ] {
            assert_ne!(a, other);
        }
        let (s, d) = ([0x2001_0db8_0100_0000u64, 1], [0x2001_0db8_0100_0000u64, 2]);
        assert_eq!(isn_v6(&k, s, d, 22, 1), isn_v6(&k, s, d, 22, 1));
        assert_ne!(isn_v6(&k, s, d, 22, 1), isn_v6(&k, d, s, 22, 1));
        assert_ne!(isn_v6(&k, s, d, 22, 1), isn_v6(&k, s, d, 22, 2));
    }

    #[test]
    #[allow(deprecated)]
    fn siphash24_matches_the_standard_library() {
        use std::hash::Hasher;
        let key = TarpitKey {
            k0: 0x0706_0504_0302_0100,
            k1: 0x0f0e_0d0c_0b0a_0908,
        };
        for words in [
            vec![0x0706_0504_0302_0100u64, 0x0f0e_0d0c_0b0a_0908],
            vec![1, 2, 3, 4, u64::MAX],
        ] {
            let mut h = std::hash::SipHasher::new_with_keys(key.k0, key.k1);
            for w in &words {
                h.write(&w.to_le_bytes());
            }
            let ours = match words.len() {
                2 => xban_common::tarpit::siphash24(&key, &[words[0], words[1]]),
                _ => xban_common::tarpit::siphash24(
                    &key,
                    &[words[0], words[1], words[2], words[3], words[4]],
                ),
            };
            assert_eq!(ours, h.finish(), "{words:?}");
        }
    }
}

//! The server's receive path: NAPI with or without XDP (the same path for
//! every mechanism), threaded, so that it runs on a core of our choosing and
//! its CPU time is one thread's; the ethtool knobs and CPU affinity the
//! flood and tarpit areas set around it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use xban_lab::{in_ns, run_cmd, Lab};

use crate::bpf::BpfMap;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
pub(crate) const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGRO: u32 = 0x2c;
pub(crate) const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct Ifreq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// The same receive path for every mechanism: NAPI on the server's veth
/// (GRO on), threaded, and every frame eligible for it (TSO off on the
/// sender's end; veth hands TSO-capable senders' frames to the backlog of
/// the sending CPU otherwise, and turns TSO off by itself once XDP is
/// attached).
pub(crate) fn enable_napi(lab: &Lab) -> Result<()> {
    ethtool_set(&lab.srv_ns, &lab.srv_if, ETHTOOL_SGRO, 1)?;
    ethtool_set(&lab.atk_ns, &lab.atk_if, ETHTOOL_STSO, 0)?;
    threaded_napi(&lab.srv_ns, &lab.srv_if).context("threaded NAPI on the server's veth")
}

/// NAPI of `ifname` in `ns` in its own kernel thread (`napi/IFNAME-N`).
pub(crate) fn threaded_napi(ns: &str, ifname: &str) -> Result<()> {
    run_cmd(
        Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg(format!("echo 1 > /sys/class/net/{ifname}/threaded")),
    )?;
    Ok(())
}

/// Reads the sum over CPUs of the per-CPU counters `idx` of the pinned
/// array `map` (XDP's `stats`, the tarpit's `tarpit_stats`).
pub(crate) fn percpu_counter(map: BpfMap, idx: Vec<u32>) -> Result<Box<dyn Fn() -> Result<u64>>> {
    let ncpu = possible_cpus()?;
    Ok(Box::new(move || {
        let mut total = 0;
        for i in &idx {
            let mut buf = vec![0u8; 8 * ncpu];
            map.lookup(&i.to_ne_bytes(), &mut buf)
                .context("read an XDP counter")?;
            total += buf
                .chunks(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                .sum::<u64>();
        }
        Ok(total)
    }))
}

/// A legacy ethtool "set" (`ethtool -K`), without needing ethtool installed.
pub(crate) fn ethtool_set(ns: &str, ifname: &str, cmd: u32, data: u32) -> Result<()> {
    let ifname = ifname.to_string();
    in_ns(ns, move || -> Result<()> {
        // SAFETY: plain socket for the ethtool ioctl, closed by OwnedFd.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut value = EthtoolValue { cmd, data };
        let mut req = Ifreq {
            name: [0; libc::IFNAMSIZ],
            data: &mut value as *mut EthtoolValue as *mut libc::c_void,
            _pad: [0; 16],
        };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: req points at a valid ifreq whose data is an ethtool_value.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req) };
        ensure!(
            r == 0,
            "ethtool command {cmd:#x} on {ifname}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    })?
}

/// PIDs of the NAPI kernel threads that exist now.
pub(crate) fn napi_threads() -> Result<Vec<(i32, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
            if comm.starts_with("napi/") {
                out.push((pid, comm.trim().to_string()));
            }
        }
    }
    Ok(out)
}

/// A veth end's NAPI thread: named after the interface (the kernel may
/// cut the name short) and new since `before`.
pub(crate) fn napi_thread(ifname: &str, before: &[(i32, String)]) -> Result<i32> {
    let want = format!("napi/{ifname}-");
    let found: Vec<i32> = napi_threads()?
        .into_iter()
        .filter(|(_, comm)| want.starts_with(comm.as_str()) || comm.starts_with(&want))
        .filter(|t| !before.contains(t))
        .map(|(pid, _)| pid)
        .collect();
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no NAPI thread for {ifname} (threaded NAPI not enabled?)"),
        _ => bail!("several NAPI threads for {ifname}: {found:?}"),
    }
}

/// On-CPU time of a thread (schedstat, ns).
pub(crate) fn thread_cpu_ns(pid: i32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .with_context(|| format!("read /proc/{pid}/schedstat"))?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("/proc/{pid}/schedstat: {text}"))
}

pub(crate) fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

pub(crate) fn set_affinity(pid: i32, cpu: usize) -> Result<()> {
    let set = cpu_set(cpu);
    // SAFETY: valid cpu_set_t of the right size.
    let r = unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) };
    ensure!(
        r == 0,
        "pin thread {pid} to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Pins the calling thread (and what it starts) to one CPU; restores the
/// previous mask on drop.
pub(crate) struct AffinityGuard(libc::cpu_set_t);

impl AffinityGuard {
    pub(crate) fn pin_self(cpu: usize) -> Result<AffinityGuard> {
        // SAFETY: cpu_set_t is plain data, filled by the kernel.
        let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&old), &mut old) };
        ensure!(
            r == 0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        set_affinity(0, cpu)?;
        Ok(AffinityGuard(old))
    }
}

impl Drop for AffinityGuard {
    fn drop(&mut self) {
        // SAFETY: restoring a mask the kernel gave us.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&self.0), &self.0) };
    }
}

pub(crate) fn online_cpus() -> Result<Vec<usize>> {
    cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online")?)
}

pub(crate) fn possible_cpus() -> Result<usize> {
    Ok(cpu_list(&std::fs::read_to_string(
        "/sys/devices/system/cpu/possible",
    )?)?
    .len())
}

/// "0-3,5" → [0, 1, 2, 3, 5]
pub(crate) fn cpu_list(text: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => out.push(part.parse()?),
        }
    }
    Ok(out)
}

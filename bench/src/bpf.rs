//! Raw `bpf(2)`, just what the benchmarks need, through one function
//! ([`sys_bpf`]). Why not aya: aya 0.14 loads programs only from ELF objects
//! (or pins) and creates maps only as part of an object, while the
//! benchmarks assemble small XDP programs from instructions (the empty
//! program under the floor figure, the flood generator) and make bare array
//! maps for them; its `TestRun` runs only programs it loaded. The pinned
//! maps are read and written here too, so that the benchmarks see an entry
//! the moment it exists, without asking the agent or forking bpftool.

use std::ffi::CString;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// BPF_PROG_TEST_RUN flag: frames really go out (XDP_TX, XDP_REDIRECT).
pub(crate) const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Explicit, so that it is zero: the kernel refuses non-zero bytes
    /// past the fields it knows.
    _pad: u32,
}

/// One BPF instruction.
pub(crate) fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | dst;
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(b)
}

/// Loads an XDP program given as instructions; the verifier log on refusal.
pub(crate) fn load_xdp(insns: &[u64]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
    };
    let fd = sys_bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        anyhow::anyhow!(
            "load an XDP program: {e}: {}",
            String::from_utf8_lossy(&log[..end])
        )
    })?;
    // SAFETY: BPF_PROG_LOAD returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_PROG_TEST_RUN of `prog` on `packet`: verdict and average ns.
pub(crate) fn prog_test_run(
    prog: &OwnedFd,
    packet: &[u8],
    repeat: u32,
    flags: u32,
) -> std::io::Result<(u32, u32)> {
    let mut run = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        flags,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut run)?;
    Ok((run.retval, run.duration))
}

/// Pins `prog` at `path` (BPF_OBJ_PIN), for tools that attach by path.
pub(crate) fn pin_prog(prog: &OwnedFd, path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: prog.as_raw_fd() as u32,
        file_flags: 0,
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr)
        .with_context(|| format!("pin a program at {}", path.display()))?;
    Ok(())
}

/// A pinned program's fd (BPF_OBJ_GET).
pub(crate) fn open_pinned_prog(path: &Path) -> Result<OwnedFd> {
    obj_get(path).with_context(|| format!("open pinned program {}", path.display()))
}

/// The fd of a pinned object (BPF_OBJ_GET).
fn obj_get(path: &Path) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a repr(C) prefix of union bpf_attr for `cmd`; the
    // kernel zero-extends the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A BPF map: pinned by the agent, or made here.
pub(crate) struct BpfMap(OwnedFd);

impl BpfMap {
    /// A new (unpinned) array map, freed with the fd.
    pub(crate) fn create_array(value_size: u32, max_entries: u32) -> Result<BpfMap> {
        let mut attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size,
            max_entries,
            map_flags: 0,
        };
        let fd = sys_bpf(BPF_MAP_CREATE, &mut attr).context("create an array map")?;
        // SAFETY: BPF_MAP_CREATE returned a new fd that we own.
        Ok(BpfMap(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.0.as_raw_fd()
    }

    pub(crate) fn open(path: &Path) -> Result<BpfMap> {
        let fd = obj_get(path).with_context(|| format!("open pinned map {}", path.display()))?;
        Ok(BpfMap(fd))
    }

    pub(crate) fn update(&self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.0.as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: 0,
        };
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }

    /// Looks `key` up into `value` (sized by the caller: per-CPU maps hold
    /// one slot per possible CPU).
    pub(crate) fn lookup(&self, key: &[u8], value: &mut [u8]) -> std::io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.0.as_fd().as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(|_| ())
    }
}

/// A pinned LPM trie of bans (`bans_v4` or `bans_v6`).
pub(crate) struct PinnedTrie(BpfMap);

/// `xban_common::BanValue`: class and flags, two u32.
const BAN_VALUE_SIZE: usize = 8;

impl PinnedTrie {
    pub(crate) fn open(path: &Path) -> Result<PinnedTrie> {
        Ok(PinnedTrie(BpfMap::open(path)?))
    }

    /// Is `addr` (as a host, /32 or /128) covered by an entry?
    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        let mut key = [0u8; 20];
        let len = match addr {
            IpAddr::V4(a) => {
                key[..4].copy_from_slice(&32u32.to_ne_bytes());
                key[4..8].copy_from_slice(&a.octets());
                8
            }
            IpAddr::V6(a) => {
                key[..4].copy_from_slice(&128u32.to_ne_bytes());
                key[4..20].copy_from_slice(&a.octets());
                20
            }
        };
        let mut value = [0u8; BAN_VALUE_SIZE];
        self.0.lookup(&key[..len], &mut value).is_ok()
    }
}

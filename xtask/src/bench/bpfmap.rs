//! Reading the agent's pinned ban tries straight from the kernel (the
//! `bpf(2)` syscall), so that the benchmarks see an entry the moment it
//! exists, without asking the agent or forking bpftool.

use std::ffi::CString;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{bail, Result};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;
/// `union bpf_attr` is larger; the kernel requires the unused tail to be
/// zero, and 64 bytes hold every field the two commands use.
const ATTR_SIZE: usize = 64;
/// `xban_common::BanValue`: class and flags, two u32.
const BAN_VALUE_SIZE: usize = 8;

fn bpf(cmd: libc::c_long, attr: &mut [u64; ATTR_SIZE / 8]) -> libc::c_long {
    // SAFETY: `attr` is a zero-initialised buffer laid out as the kernel's
    // bpf_attr for `cmd`, and every pointer stored in it points to memory
    // that outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            ATTR_SIZE as libc::c_uint,
        )
    }
}

/// A pinned LPM trie of bans (`bans_v4` or `bans_v6`).
pub struct PinnedTrie {
    fd: OwnedFd,
}

impl PinnedTrie {
    pub fn open(path: &Path) -> Result<PinnedTrie> {
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())?;
        let mut attr = [0u64; ATTR_SIZE / 8];
        attr[0] = cpath.as_ptr() as u64; // pathname; bpf_fd and file_flags stay 0
        let fd = bpf(BPF_OBJ_GET, &mut attr);
        if fd < 0 {
            bail!(
                "BPF_OBJ_GET {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        Ok(PinnedTrie {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Is `addr` (as a host, /32 or /128) covered by an entry?
    pub fn contains(&self, addr: IpAddr) -> bool {
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
        let mut attr = [0u64; ATTR_SIZE / 8];
        attr[0] = self.fd.as_raw_fd() as u32 as u64; // map_fd (+ padding)
        attr[1] = key[..len].as_ptr() as u64;
        attr[2] = value.as_mut_ptr() as u64;
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) == 0
    }
}

//! A shared, writable mapping of a file: stores through it reach the
//! file's page cache as mmap stores, and munmap at drop.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Result, bail, ensure};

pub struct SharedMap {
    addr: *mut libc::c_void,
    len: usize,
}

impl SharedMap {
    /// Maps the first `len` bytes of `file` (open for reading and
    /// writing, at least `len` long, and kept so while mapped: a store
    /// past its end is SIGBUS).
    pub fn new(file: &File, len: usize) -> Result<Self> {
        // SAFETY: a new mapping the kernel places; it aliases nothing of
        // this process and is only reached through `store` below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        Ok(SharedMap { addr, len })
    }

    /// Copies `bytes` into the mapping at `at`.
    pub fn store(&self, at: usize, bytes: &[u8]) -> Result<()> {
        ensure!(
            at.checked_add(bytes.len())
                .is_some_and(|end| end <= self.len),
            "store of {} bytes at {at} past the mapping's {} bytes",
            bytes.len(),
            self.len
        );
        // SAFETY: at + bytes.len() <= len (checked above): inside the live
        // mapping, which no Rust reference aliases.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.addr.cast::<u8>().add(at),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// msync(MS_SYNC) of the whole mapping.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: the live mapping, its whole length.
        if unsafe { libc::msync(self.addr, self.len, libc::MS_SYNC) } != 0 {
            bail!("msync: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

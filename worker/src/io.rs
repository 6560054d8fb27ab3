//! The shared-fd IO manager: every byte the engine reads or writes goes
//! through [`BlockDevice`]. [`FdDevice`] wraps the one device fd the broker
//! passed; [`MemDevice`] is an in-memory disk for unit tests and fuzzing;
//! [`Watched`] wraps either and remembers the device's first failure for
//! the worker's health report.
//!
//! Direct-I/O mode (for MMP on block devices, see DESIGN.md) sets O_DIRECT
//! on the shared fd; from then on every transfer is rounded out to
//! [`DIRECT_ALIGN`] and bounced through an aligned buffer, so callers keep
//! using any offset and length.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Alignment of the bounce buffers of direct-I/O mode, and of transfers
/// when the device's logical sector size is not known: every logical
/// sector size Linux supports divides 4096.
pub const DIRECT_ALIGN: usize = 4096;

pub trait BlockDevice: Send + Sync {
    /// Fills `buf` from byte `offset`. Reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at byte `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&self) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Required alignment of offsets and lengths, 1 if none (the manager
    /// aligns internally; callers may use this to size their own I/O well).
    fn alignment(&self) -> usize;
}

/// The device fd passed by the broker (block device or image file).
pub struct FdDevice {
    file: File,
    size: u64,
    direct: AtomicBool,
    /// Transfer alignment in direct-I/O mode: the logical sector size.
    sector: AtomicU64,
    /// Direct I/O: a write that is not sector-aligned reads, patches and
    /// writes back whole sectors, which would undo a concurrent write to
    /// the rest of them (two 1 KiB blocks in one 4 KiB sector, or the MMP
    /// thread beside the engine). Such writes take this exclusively,
    /// aligned ones shared.
    rmw: RwLock<()>,
}

impl FdDevice {
    /// Wraps `fd`; its size is found with lseek(SEEK_END), which works for
    /// block devices and regular files alike.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let file = File::from(fd);
        let size = nix::unistd::lseek(file.as_fd(), 0, nix::unistd::Whence::SeekEnd)?;
        Ok(FdDevice {
            file,
            size: u64::try_from(size).map_err(|_| io::Error::other("negative device size"))?,
            direct: AtomicBool::new(false),
            sector: AtomicU64::new(DIRECT_ALIGN as u64),
            rmw: RwLock::new(()),
        })
    }

    /// Switches the shared fd to O_DIRECT, transfers aligned to `sector`
    /// (the device's logical sector size, BLKSSZGET; None: 4096, valid for
    /// every device). Fails where the kernel or the underlying filesystem
    /// refuses it. Aligning to the real sector size matters beside the
    /// MMP block: a 1 KiB block shares no 4 KiB read-modify-write with its
    /// neighbours on a 512-byte-sector disk, so a write of ours never
    /// carries a stale copy of another node's MMP write back over it.
    pub fn enable_direct_io(&self, sector: Option<u32>) -> io::Result<()> {
        let sector = sector
            .map(|s| s as usize)
            .filter(|s| s.is_power_of_two() && (512..=DIRECT_ALIGN).contains(s))
            .unwrap_or(DIRECT_ALIGN);
        self.sector.store(sector as u64, Ordering::Release);
        let flags = OFlag::from_bits_truncate(fcntl(self.file.as_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            self.file.as_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_DIRECT),
        )?;
        self.direct.store(true, Ordering::Release);
        Ok(())
    }

    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Acquire)
    }

    fn check_range(&self, len: usize, offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| io::Error::other("offset overflow"))?;
        if end > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("access beyond end of device ({end} > {})", self.size),
            ));
        }
        Ok(())
    }
}

/// The aligned window `[start, start+len)` covering `[offset, offset+len)`,
/// ending at `size` at the latest (a block device's size is a multiple of
/// its logical sector size, so that end is aligned enough).
fn aligned_window(offset: u64, len: usize, size: u64, a: u64) -> (u64, usize) {
    let start = offset / a * a;
    let end = ((offset + len as u64).div_ceil(a) * a).min(size.max(offset + len as u64));
    (start, (end - start) as usize)
}

/// A heap buffer whose usable slice starts on a DIRECT_ALIGN boundary.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let misalign = storage.as_ptr() as usize % DIRECT_ALIGN;
        let start = if misalign == 0 {
            0
        } else {
            DIRECT_ALIGN - misalign
        };
        AlignedBuf {
            storage,
            start,
            len,
        }
    }
    fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl BlockDevice for FdDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(buf.len(), offset)?;
        if !self.is_direct() {
            return self.file.read_exact_at(buf, offset);
        }
        let (start, len) = aligned_window(
            offset,
            buf.len(),
            self.size,
            self.sector.load(Ordering::Acquire),
        );
        let mut bounce = AlignedBuf::new(len);
        self.file.read_exact_at(bounce.as_mut_slice(), start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&bounce.as_slice()[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_range(buf.len(), offset)?;
        if !self.is_direct() {
            return self.file.write_all_at(buf, offset);
        }
        let (start, len) = aligned_window(
            offset,
            buf.len(),
            self.size,
            self.sector.load(Ordering::Acquire),
        );
        let mut bounce = AlignedBuf::new(len);
        let skip = (offset - start) as usize;
        let partial = skip != 0 || len != buf.len();
        let _exclusive = partial.then(|| self.rmw.write().unwrap_or_else(|e| e.into_inner()));
        let _shared = (!partial).then(|| self.rmw.read().unwrap_or_else(|e| e.into_inner()));
        if partial {
            self.file.read_exact_at(bounce.as_mut_slice(), start)?;
        }
        bounce.as_mut_slice()[skip..skip + buf.len()].copy_from_slice(buf);
        self.file.write_all_at(bounce.as_slice(), start)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn alignment(&self) -> usize {
        if self.is_direct() {
            self.sector.load(Ordering::Acquire) as usize
        } else {
            1
        }
    }
}

/// A device that remembers its first failure and counts them all. The
/// engine turns each failure into an error for the one object that met it;
/// this keeps the news for the operator (`safemount list`).
pub struct Watched<D> {
    inner: D,
    first_error: OnceLock<String>,
    errors: AtomicU64,
}

impl<D: BlockDevice> Watched<D> {
    pub fn new(inner: D) -> Self {
        Watched {
            inner,
            first_error: OnceLock::new(),
            errors: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The first failure, as "read at byte N: error", if any.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.get().map(String::as_str)
    }

    /// How many calls failed.
    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Counts a failed call and keeps the first one's description.
    fn note(&self, r: io::Result<()>, what: impl FnOnce() -> String) -> io::Result<()> {
        if let Err(e) = &r {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let _ = self.first_error.set(format!("{} failed: {e}", what()));
        }
        r
    }
}

impl<D: BlockDevice> BlockDevice for Watched<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.inner.read_at(buf, offset);
        self.note(r, || format!("device read at byte {offset}"))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.inner.write_at(buf, offset);
        self.note(r, || format!("device write at byte {offset}"))
    }

    fn flush(&self) -> io::Result<()> {
        self.note(self.inner.flush(), || "device flush".to_owned())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
}

/// An in-memory disk.
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
}

impl MemDevice {
    pub fn new(data: Vec<u8>) -> Self {
        MemDevice {
            data: RwLock::new(data),
        }
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn range(&self, len: usize, offset: u64, size: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        match start.checked_add(len) {
            Some(end) if end <= size => Ok(start..end),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "access beyond end of device",
            )),
        }
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let r = self.range(buf.len(), offset, data.len())?;
        buf.copy_from_slice(&data[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let r = self.range(buf.len(), offset, data.len())?;
        data[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn alignment(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_window_covers_request() {
        let big = 1 << 30;
        assert_eq!(aligned_window(0, 4096, big, 4096), (0, 4096));
        assert_eq!(aligned_window(100, 10, big, 4096), (0, 4096));
        assert_eq!(aligned_window(4000, 200, big, 4096), (0, 8192));
        assert_eq!(aligned_window(8192, 1, big, 4096), (8192, 4096));
        // A device of 9 sectors of 512 bytes: the last window ends with it.
        assert_eq!(aligned_window(4096, 512, 4608, 4096), (4096, 512));
        // 512-byte sectors: a 1 KiB block is its own window.
        assert_eq!(aligned_window(5120, 1024, big, 512), (5120, 1024));
    }

    #[test]
    fn aligned_buf_is_aligned() {
        for len in [1, 512, 4096, 10000] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
            assert_eq!(b.as_slice().len(), len);
        }
    }

    #[test]
    fn mem_device_bounds() {
        let d = MemDevice::new(vec![7u8; 1000]);
        let mut b = [0u8; 10];
        d.read_at(&mut b, 990).unwrap();
        assert_eq!(b, [7u8; 10]);
        assert!(d.read_at(&mut b, 991).is_err());
        assert!(d.read_at(&mut b, u64::MAX).is_err());
        d.write_at(&[1, 2], 0).unwrap();
        assert_eq!(&d.contents()[..3], &[1, 2, 7]);
    }

    /// A zeroed file of `len` bytes at `path`, opened read-write.
    fn file_device(path: &std::path::Path, len: usize) -> FdDevice {
        std::fs::write(path, vec![0u8; len]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        FdDevice::new(f.into()).unwrap()
    }

    #[test]
    fn direct_io_on_a_file_round_trips_unaligned() {
        let path = std::env::temp_dir().join(format!("safemount-io-{}", std::process::id()));
        let dev = file_device(&path, 3 * 4096);
        // tmpfs refuses O_DIRECT; then this test only checks buffered mode.
        let direct = dev.enable_direct_io(None).is_ok();
        dev.write_at(b"hello", 4094).unwrap();
        let mut b = [0u8; 7];
        dev.read_at(&mut b, 4093).unwrap();
        assert_eq!(&b, b"\0hello\0");
        assert_eq!(dev.alignment(), if direct { DIRECT_ALIGN } else { 1 });
        assert!(dev.read_at(&mut b, 3 * 4096 - 3).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    /// Two threads writing the two halves of every 4 KiB sector, each
    /// half a read-modify-write in direct mode: neither undoes the other.
    #[test]
    fn concurrent_partial_writes_keep_each_other() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../target/safemount-rmw-{}", std::process::id()));
        let sectors = 256u64;
        let dev = file_device(&path, (sectors * 4096) as usize);
        if dev.enable_direct_io(None).is_err() {
            std::fs::remove_file(&path).unwrap();
            crate::test_skip::skip("the target directory's filesystem refuses O_DIRECT");
            return;
        }
        std::thread::scope(|s| {
            for half in 0..2u64 {
                let dev = &dev;
                s.spawn(move || {
                    for i in 0..sectors {
                        dev.write_at(&[half as u8 + 1; 2048], i * 4096 + half * 2048)
                            .unwrap();
                    }
                });
            }
        });
        let mut all = vec![0u8; (sectors * 4096) as usize];
        dev.read_at(&mut all, 0).unwrap();
        std::fs::remove_file(&path).unwrap();
        for (i, sector) in all.chunks(4096).enumerate() {
            assert!(
                sector[..2048].iter().all(|&b| b == 1) && sector[2048..].iter().all(|&b| b == 2),
                "sector {i} lost a half"
            );
        }
    }
}

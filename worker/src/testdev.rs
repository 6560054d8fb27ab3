//! Test devices. [`Failing`] fails chosen calls, as a dying disk, a pulled
//! cable or a full host filesystem do. [`Pausing`] holds a chosen read in
//! the device until the test lets it go, to open a race window at will.
//! [`PowerLoss`] serves reads from its
//! current contents and records every write and flush, so a test can ask
//! what a disk could hold had the power failed after any operation.
//!
//! The model: a flush makes every earlier write durable; writes after the
//! last flush sit in a volatile cache and reach the medium in any order,
//! or not at all. [`PowerLoss::crash_at`] keeps everything before the last
//! flush before the crash point, plus a seeded subset of the later writes
//! applied in a seeded order (two writes to one place may land either way
//! round). A single write is atomic (no torn blocks).

#![allow(clippy::unwrap_used)]

use std::io;
use std::ops::Range;
use std::sync::{Condvar, Mutex};

use crate::io::{BlockDevice, MemDevice};

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Flush,
}

struct Inner {
    current: Vec<u8>,
    ops: Vec<Op>,
}

pub(crate) struct PowerLoss {
    /// The contents when recording started.
    base: Vec<u8>,
    inner: Mutex<Inner>,
}

/// A small seeded generator (xorshift64*).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % (n.max(1) as u64)) as usize
    }
}

impl PowerLoss {
    pub(crate) fn new(image: Vec<u8>) -> PowerLoss {
        PowerLoss {
            inner: Mutex::new(Inner {
                current: image.clone(),
                ops: Vec::new(),
            }),
            base: image,
        }
    }

    /// The contents as the device shows them now (no crash).
    pub(crate) fn contents(&self) -> Vec<u8> {
        self.inner.lock().unwrap().current.clone()
    }

    /// Operations recorded so far: the crash points are `0..=ops()`.
    pub(crate) fn ops(&self) -> usize {
        self.inner.lock().unwrap().ops.len()
    }

    /// The image after a power loss at the current point.
    pub(crate) fn crash(&self, seed: u64) -> Vec<u8> {
        self.crash_at(self.ops(), seed)
    }

    /// The image after a power loss once the first `point` operations
    /// were issued: the writes before the last flush among them, then a
    /// seeded, reordered subset of the writes after it.
    pub(crate) fn crash_at(&self, point: usize, seed: u64) -> Vec<u8> {
        let inner = self.inner.lock().unwrap();
        let ops = &inner.ops[..point.min(inner.ops.len())];
        let durable = ops
            .iter()
            .rposition(|o| matches!(o, Op::Flush))
            .map_or(0, |i| i + 1);
        let mut img = self.base.clone();
        let apply = |img: &mut Vec<u8>, op: &Op| {
            if let Op::Write { offset, data } = op {
                let o = *offset as usize;
                img[o..o + data.len()].copy_from_slice(data);
            }
        };
        for op in &ops[..durable] {
            apply(&mut img, op);
        }
        let mut rng = Rng::new(seed);
        let mut pending: Vec<&Op> = ops[durable..]
            .iter()
            .filter(|_| rng.next() & 1 == 0)
            .collect();
        // Fisher-Yates.
        for i in (1..pending.len()).rev() {
            let j = rng.below(i + 1);
            pending.swap(i, j);
        }
        for op in pending {
            apply(&mut img, op);
        }
        img
    }
}

impl BlockDevice for PowerLoss {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let inner = self.inner.lock().unwrap();
        let o = usize::try_from(offset).map_err(|_| io::Error::other("offset"))?;
        let src = o
            .checked_add(buf.len())
            .and_then(|e| inner.current.get(o..e))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        let o = usize::try_from(offset).map_err(|_| io::Error::other("offset"))?;
        let dst = o
            .checked_add(buf.len())
            .and_then(|e| inner.current.get_mut(o..e))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
        dst.copy_from_slice(buf);
        inner.ops.push(Op::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.lock().unwrap().ops.push(Op::Flush);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.base.len() as u64
    }

    fn alignment(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_flushed_and_a_subset_of_the_rest() {
        let d = PowerLoss::new(vec![0u8; 16]);
        d.write_at(&[1], 0).unwrap();
        d.flush().unwrap();
        for i in 1..9u8 {
            d.write_at(&[i + 1], u64::from(i)).unwrap();
        }
        assert_eq!(d.ops(), 10);
        assert_eq!(d.contents()[..9], [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // Before the flush nothing is durable: the write may or may not land.
        let first: std::collections::BTreeSet<u8> = (0..16).map(|s| d.crash_at(1, s)[0]).collect();
        assert_eq!(first, [0, 1].into_iter().collect());
        assert_eq!(d.crash_at(2, 5)[..2], [1, 0]);
        let mut kept = std::collections::BTreeSet::new();
        for seed in 0..32 {
            let img = d.crash(seed);
            assert_eq!(img[0], 1, "flushed write lost");
            // Each later write either landed whole or not at all.
            for (i, &b) in img.iter().enumerate().take(9).skip(1) {
                assert!(b == 0 || b == i as u8 + 1);
            }
            kept.insert(img[1..9].to_vec());
        }
        assert!(kept.len() > 8, "crash images should differ by seed");
    }

    #[test]
    fn overlapping_writes_land_in_any_order() {
        let d = PowerLoss::new(vec![0u8; 4]);
        d.write_at(&[1], 0).unwrap();
        d.write_at(&[2], 0).unwrap();
        let seen: std::collections::BTreeSet<u8> = (0..64).map(|s| d.crash(s)[0]).collect();
        assert_eq!(seen, [0, 1, 2].into_iter().collect());
    }
}

/// Which calls a [`Fault`] hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Read,
    Write,
    Flush,
}

/// One failure rule: calls of kind `call` touching a byte in `bytes` fail
/// with `errno`. With `short`, a write first stores the first half of its
/// buffer (a transfer cut short), then fails.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub(crate) call: Call,
    pub(crate) bytes: Range<u64>,
    pub(crate) errno: i32,
    pub(crate) short: bool,
}

impl Fault {
    pub(crate) fn new(call: Call, bytes: Range<u64>, errno: i32) -> Fault {
        Fault {
            call,
            bytes,
            errno,
            short: false,
        }
    }

    /// Every call of kind `call`, anywhere.
    pub(crate) fn everywhere(call: Call, errno: i32) -> Fault {
        Fault::new(call, 0..u64::MAX, errno)
    }

    fn hits(&self, call: Call, offset: u64, len: usize) -> bool {
        let end = offset.saturating_add(len as u64);
        self.call == call
            && (call == Call::Flush || (offset < self.bytes.end && self.bytes.start < end))
    }
}

/// An in-memory disk that fails the calls its rules name; the rest work.
pub(crate) struct Failing {
    mem: MemDevice,
    rules: Mutex<Vec<Fault>>,
}

impl Failing {
    pub(crate) fn new(image: Vec<u8>) -> Failing {
        Failing {
            mem: MemDevice::new(image),
            rules: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn fail(&self, fault: Fault) {
        self.rules.lock().unwrap().push(fault);
    }

    /// The disk works again (the cable is back, the host has room).
    pub(crate) fn heal(&self) {
        self.rules.lock().unwrap().clear();
    }

    pub(crate) fn contents(&self) -> Vec<u8> {
        self.mem.contents()
    }

    fn fault(&self, call: Call, offset: u64, len: usize) -> Option<Fault> {
        let rules = self.rules.lock().unwrap();
        rules.iter().find(|f| f.hits(call, offset, len)).cloned()
    }
}

impl BlockDevice for Failing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self.fault(Call::Read, offset, buf.len()) {
            Some(f) => Err(io::Error::from_raw_os_error(f.errno)),
            None => self.mem.read_at(buf, offset),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self.fault(Call::Write, offset, buf.len()) {
            Some(f) => {
                if f.short {
                    self.mem.write_at(&buf[..buf.len() / 2], offset)?;
                }
                Err(io::Error::from_raw_os_error(f.errno))
            }
            None => self.mem.write_at(buf, offset),
        }
    }

    fn flush(&self) -> io::Result<()> {
        match self.fault(Call::Flush, 0, 0) {
            Some(f) => Err(io::Error::from_raw_os_error(f.errno)),
            None => self.mem.flush(),
        }
    }

    fn size(&self) -> u64 {
        self.mem.size()
    }

    fn alignment(&self) -> usize {
        1
    }
}

/// An in-memory disk whose next read (or write) touching an armed byte
/// range stops inside the device (after the engine decided what to read
/// or write, before the bytes are copied) until [`Pausing::release`].
pub(crate) struct Pausing {
    mem: MemDevice,
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Default)]
struct PauseState {
    armed: Option<Range<u64>>,
    /// The armed range stops writes, not reads.
    writes: bool,
    paused: bool,
    released: bool,
}

impl Pausing {
    pub(crate) fn new(image: Vec<u8>) -> Pausing {
        Pausing {
            mem: MemDevice::new(image),
            state: Mutex::new(PauseState::default()),
            changed: Condvar::new(),
        }
    }

    /// The next read touching `bytes` pauses.
    pub(crate) fn arm(&self, bytes: Range<u64>) {
        *self.state.lock().unwrap() = PauseState {
            armed: Some(bytes),
            ..Default::default()
        };
    }

    /// The next write touching `bytes` pauses.
    pub(crate) fn arm_write(&self, bytes: Range<u64>) {
        *self.state.lock().unwrap() = PauseState {
            armed: Some(bytes),
            writes: true,
            ..Default::default()
        };
    }

    /// The disk's bytes.
    pub(crate) fn contents(&self) -> Vec<u8> {
        self.mem.contents()
    }

    /// Stops here if this access is the armed one.
    fn pause_if_armed(&self, write: bool, offset: u64, len: usize) {
        let mut st = self.state.lock().unwrap();
        let end = offset.saturating_add(len as u64);
        if let Some(r) = st.armed.clone()
            && st.writes == write
            && offset < r.end
            && r.start < end
        {
            st.armed = None;
            st.paused = true;
            self.changed.notify_all();
            while !st.released {
                st = self.changed.wait(st).unwrap();
            }
        }
    }

    /// Waits until a read has paused.
    pub(crate) fn wait_paused(&self) {
        let mut st = self.state.lock().unwrap();
        while !st.paused {
            st = self.changed.wait(st).unwrap();
        }
    }

    /// Lets the paused read (or the next one) go on.
    pub(crate) fn release(&self) {
        self.state.lock().unwrap().released = true;
        self.changed.notify_all();
    }
}

impl BlockDevice for Pausing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.pause_if_armed(false, offset, buf.len());
        self.mem.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.pause_if_armed(true, offset, buf.len());
        self.mem.write_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.mem.flush()
    }

    fn size(&self) -> u64 {
        self.mem.size()
    }

    fn alignment(&self) -> usize {
        1
    }
}

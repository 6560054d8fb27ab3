//! Multi-mount protection on a read-write mount, as fs/ext4/mmp.c does it:
//!
//! - claim (at open, before the journal is replayed): a clean MMP block is
//!   claimed; e2fsck's sequence refuses; any other sequence is watched for
//!   a wait time (2 x check interval + 1 s, at most check interval + 60 s)
//!   and refuses if it changed (a live node updates it). The claim writes a
//!   random sequence with this node's name and the device's, waits again
//!   and refuses if anyone else wrote meanwhile. Refusals name the holder.
//! - while mounted, a thread (this module's only one) checks every update
//!   interval that the block is still as it last wrote it, then writes the
//!   next sequence and the time. A block someone else wrote fences the
//!   mount (see `fault`): nothing more is written. It touches only the
//!   device, never a lock that serving takes, so slow or stuck requests do
//!   not delay it.
//! - at unmount, after the last write, it writes the clean sequence. A
//!   killed worker leaves the block "in use", as a crashed kernel does: the
//!   next mount waits and claims.
//!
//! Every access goes to the device (on a block device the worker has set
//! O_DIRECT, so other hosts see each write at once and we see theirs).

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::fault::Faults;
use super::ondisk::mmp::{EXT4_MMP_SEQ_CLEAN, EXT4_MMP_SEQ_MAX, MMP_SIZE, Mmp, MmpState};
use super::ondisk::superblock::Superblock;
use super::{Error, Result};
use crate::io::BlockDevice;

/// EXT4_MMP_UPDATE_INTERVAL, EXT4_MMP_MAX_UPDATE_INTERVAL (seconds).
const DEFAULT_UPDATE_INTERVAL: u16 = 5;
const MAX_UPDATE_INTERVAL: u16 = 300;
/// EXT4_MMP_MIN_CHECK_INTERVAL, EXT4_MMP_MAX_CHECK_INTERVAL (seconds).
const MIN_CHECK_INTERVAL: u16 = 5;
const MAX_CHECK_INTERVAL: u16 = 300;

/// Called before each wait of a claim with its length and why (the broker
/// tells the user who is mounting).
pub type WaitHook = Arc<dyn Fn(Duration, &str) + Send + Sync>;

/// Who is mounting, as written into the MMP block.
#[derive(Clone, Default)]
pub struct MmpOptions {
    /// This host's node name (uname).
    pub node: String,
    /// The device's name ("loop0", "sdb1").
    pub device: String,
    pub on_wait: Option<WaitHook>,
}

impl std::fmt::Debug for MmpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmpOptions")
            .field("node", &self.node)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The MMP block's place and format.
struct Block {
    dev: Arc<dyn BlockDevice>,
    number: u64,
    offset: u64,
    len: usize,
    csum_seed: Option<u32>,
}

impl Block {
    fn read(&self) -> Result<(Vec<u8>, Mmp)> {
        let mut buf = vec![0u8; self.len];
        self.dev
            .read_at(&mut buf, self.offset)
            .map_err(|source| Error::Io {
                offset: self.offset,
                source,
            })?;
        let m = Mmp::parse(&buf, self.number, self.csum_seed)?;
        Ok((buf, m))
    }

    fn write(&self, buf: &mut [u8], m: &Mmp) -> Result<()> {
        m.write(buf, self.csum_seed);
        self.dev
            .write_at(buf, self.offset)
            .map_err(|source| Error::Io {
                offset: self.offset,
                source,
            })
    }
}

/// A claimed MMP block and the thread that keeps it fresh; dropping it
/// stops the thread, which then writes the clean sequence (unless the
/// mount was fenced).
pub(crate) struct MmpGuard {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn random_seq() -> u32 {
    // RandomState is seeded from getrandom: a fresh random number each call.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_secs());
    let v = (h.finish() as u32) % EXT4_MMP_SEQ_MAX;
    v.saturating_add(1)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fixed<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(s.bytes().take(N.saturating_sub(1))) {
        *o = b;
    }
    out
}

/// The intervals of a mount: (update, check, wait), from the superblock's
/// update interval and the check interval the block asks for.
fn intervals(sb: &Superblock, block_check: u16) -> (Duration, u16, Duration) {
    let update = match sb.s_mmp_update_interval {
        0 => DEFAULT_UPDATE_INTERVAL,
        n => n.min(MAX_UPDATE_INTERVAL),
    };
    // The block's own check interval is capped (a hostile disk could ask
    // for 18 hours; the kernel never writes more than 300 s).
    let check = update
        .max(MIN_CHECK_INTERVAL)
        .max(block_check.min(MAX_CHECK_INTERVAL));
    let c = u64::from(check);
    let wait = c
        .saturating_mul(2)
        .saturating_add(1)
        .min(c.saturating_add(60));
    (
        Duration::from_secs(u64::from(update)),
        check,
        Duration::from_secs(wait),
    )
}

/// Claims the MMP block for a read-write mount of `dev` (see the module
/// documentation) and starts the update thread.
pub(crate) fn claim(
    dev: &Arc<dyn BlockDevice>,
    sb: &Superblock,
    csum_seed: Option<u32>,
    opts: &MmpOptions,
    faults: Arc<Faults>,
) -> Result<MmpGuard> {
    let bs = sb.block_size();
    let block = Block {
        dev: dev.clone(),
        number: sb.s_mmp_block,
        offset: sb.s_mmp_block.saturating_mul(u64::from(bs)),
        len: MMP_SIZE.max(bs as usize),
        csum_seed,
    };
    let (mut buf, mut m) = block.read()?;
    let (update, check, wait) = intervals(sb, m.mmp_check_interval);
    let waiting = |why: String| {
        tracing::info!("{why}");
        if let Some(hook) = &opts.on_wait {
            hook(wait, &why);
        }
        std::thread::sleep(wait);
    };
    match m.state() {
        MmpState::Clean => {}
        MmpState::Fsck => {
            return Err(Error::Incompatible(format!(
                "e2fsck is running on the filesystem (MMP: {})",
                m.holder()
            )));
        }
        MmpState::InUse(seq) => {
            waiting(format!(
                "multi-mount protection: the filesystem was last in use by {}; waiting {} s to see whether it still is",
                m.holder(),
                wait.as_secs()
            ));
            (buf, m) = block.read()?;
            if m.mmp_seq != seq {
                return Err(Error::Incompatible(format!(
                    "the filesystem is in use on another node (MMP: {})",
                    m.holder()
                )));
            }
        }
    }
    let seq = random_seq();
    m.mmp_seq = seq;
    m.mmp_time = now_secs();
    m.mmp_nodename = fixed(&opts.node);
    m.mmp_bdevname = fixed(&opts.device);
    m.mmp_check_interval = check;
    block.write(&mut buf, &m)?;
    waiting(format!(
        "multi-mount protection: claimed the filesystem for node {:?}; waiting {} s for other nodes to see the claim",
        opts.node,
        wait.as_secs()
    ));
    let (_, now) = block.read()?;
    if now.mmp_seq != seq {
        return Err(Error::Incompatible(format!(
            "the filesystem was claimed by another node during the mount (MMP: {})",
            now.holder()
        )));
    }
    tracing::info!(
        "multi-mount protection: claimed; updating every {} s",
        update.as_secs()
    );
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("mmp".into())
        .spawn(move || {
            keep_fresh(&block, buf, m, update, &thread_stop, &faults);
        })
        .map_err(|source| Error::Io { offset: 0, source })?;
    Ok(MmpGuard {
        stop,
        thread: Mutex::new(Some(thread)),
    })
}

/// The update thread: until stopped, every `update`, checks the block is
/// as it last wrote it and writes the next sequence; then writes the clean
/// sequence unless fenced.
fn keep_fresh(
    block: &Block,
    mut buf: Vec<u8>,
    mut ours: Mmp,
    update: Duration,
    stop: &(Mutex<bool>, Condvar),
    faults: &Faults,
) {
    let mut last_write = Instant::now();
    loop {
        {
            let guard = stop.0.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = stop
                .1
                .wait_timeout_while(guard, update, |stopped| !*stopped)
                .unwrap_or_else(|e| e.into_inner());
            if *guard {
                break;
            }
        }
        match block.read() {
            Err(e) => {
                faults.fence(format!(
                    "multi-mount protection: cannot read the MMP block ({e}); stopped writing"
                ));
                return;
            }
            Ok((_, seen))
                if seen.mmp_seq != ours.mmp_seq || seen.mmp_nodename != ours.mmp_nodename =>
            {
                faults.fence(format!(
                    "multi-mount protection: the MMP block was written by {} while mounted here; the filesystem seems to be mounted twice; stopped writing",
                    seen.holder()
                ));
                return;
            }
            Ok(_) => {}
        }
        ours.mmp_seq = match ours.mmp_seq.checked_add(1) {
            Some(s) if s <= EXT4_MMP_SEQ_MAX => s,
            _ => 1,
        };
        ours.mmp_time = now_secs();
        // Other nodes wait on the check interval: twice the time an
        // update really takes, within the kernel's bounds.
        let took = u16::try_from(last_write.elapsed().as_secs()).unwrap_or(u16::MAX);
        ours.mmp_check_interval = took
            .saturating_mul(2)
            .clamp(MIN_CHECK_INTERVAL, MAX_CHECK_INTERVAL);
        last_write = Instant::now();
        if let Err(e) = block.write(&mut buf, &ours) {
            faults.fence(format!(
                "multi-mount protection: cannot write the MMP block ({e}); stopped writing"
            ));
            return;
        }
    }
    if faults.is_fenced() {
        return;
    }
    ours.mmp_seq = EXT4_MMP_SEQ_CLEAN;
    ours.mmp_time = now_secs();
    match block.write(&mut buf, &ours).and_then(|()| {
        block
            .dev
            .flush()
            .map_err(|source| Error::Io { offset: 0, source })
    }) {
        Ok(()) => tracing::info!("multi-mount protection: released"),
        Err(e) => tracing::error!("multi-mount protection: cannot write the clean sequence: {e}"),
    }
}

impl MmpGuard {
    /// Stops the update thread, which writes the clean sequence; returns
    /// once it has. Idempotent.
    pub(crate) fn release(&self) {
        {
            let mut stopped = self.stop.0.lock().unwrap_or_else(|e| e.into_inner());
            *stopped = true;
        }
        self.stop.1.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("multi-mount protection: the update thread panicked");
        }
    }
}

impl Drop for MmpGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::ext4::fault::ErrorBehaviour;
    use crate::ext4::ondisk::mmp::EXT4_MMP_SEQ_FSCK;
    use crate::ext4::testutil::{Scratch, have_mkfs, mkfs};
    use crate::ext4::{AtimeUpdates, Ext4, OpenOptions};
    use crate::io::MemDevice;

    /// A 16 MiB MMP filesystem (metadata_csum on) updated every second.
    fn image() -> Option<Vec<u8>> {
        if !have_mkfs() {
            return None;
        }
        let sc = Scratch::new("mmp-claim");
        let src = sc.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"hello").unwrap();
        let img = mkfs(
            &sc,
            &src,
            &["-O", "mmp", "-E", "mmp_update_interval=1"],
            16 * 1024,
        );
        Some(std::fs::read(img).unwrap())
    }

    struct Disk {
        dev: Arc<MemDevice>,
        block: u64,
        bs: usize,
        seed: u32,
    }

    impl Disk {
        fn new(d: Vec<u8>) -> Disk {
            let sb = Superblock::parse(&d[1024..2048], d.len() as u64).unwrap();
            let seed = crate::ext4::checksum_seed(&sb);
            Disk {
                dev: Arc::new(MemDevice::new(d)),
                block: sb.s_mmp_block,
                bs: sb.block_size() as usize,
                seed,
            }
        }

        fn offset(&self) -> usize {
            self.block as usize * self.bs
        }

        fn mmp(&self) -> Mmp {
            let c = self.dev.contents();
            Mmp::parse(
                &c[self.offset()..self.offset() + self.bs],
                self.block,
                Some(self.seed),
            )
            .unwrap()
        }

        /// Another node writes the block.
        fn forge(&self, seq: u32, node: &str) {
            let mut b = self.dev.contents()[self.offset()..self.offset() + self.bs].to_vec();
            let mut m = Mmp::parse(&b, self.block, Some(self.seed)).unwrap();
            m.mmp_seq = seq;
            m.mmp_nodename = fixed(node);
            m.write(&mut b, Some(self.seed));
            self.dev.write_at(&b, self.offset() as u64).unwrap();
        }

        fn open(&self, errors: Option<ErrorBehaviour>) -> (Result<Ext4>, Vec<u64>) {
            let waits = Arc::new(Mutex::new(Vec::new()));
            let w = waits.clone();
            let opts = OpenOptions {
                read_only: false,
                errors,
                quota_limits: [false; 3],
                atime: AtimeUpdates::Never,
                nodiratime: false,
                mmp: MmpOptions {
                    node: "node-a".into(),
                    device: "testdev".into(),
                    on_wait: Some(Arc::new(move |d: Duration, _: &str| {
                        w.lock().unwrap().push(d.as_secs())
                    })),
                },
            };
            let fs = Ext4::open(self.dev.clone(), opts);
            let waits = waits.lock().unwrap().clone();
            (fs, waits)
        }
    }

    fn name(m: &Mmp) -> String {
        String::from_utf8_lossy(crate::ext4::util::until_nul(&m.mmp_nodename)).into_owned()
    }

    #[test]
    fn claims_updates_and_releases() {
        let Some(d) = image() else { return };
        let disk = Disk::new(d);
        assert_eq!(disk.mmp().mmp_seq, EXT4_MMP_SEQ_CLEAN);
        let (fs, waits) = disk.open(None);
        let fs = fs.unwrap();
        // Clean: claimed, then one wait of 2 x 5 s + 1 s to confirm.
        assert_eq!(waits, [11]);
        let first = disk.mmp();
        assert_eq!(name(&first), "node-a");
        assert_eq!(
            String::from_utf8_lossy(crate::ext4::util::until_nul(&first.mmp_bdevname)),
            "testdev"
        );
        assert!(first.mmp_seq <= EXT4_MMP_SEQ_MAX);
        {
            // A request stuck while holding the locks serving takes (the
            // transaction, the write-back set) does not stop the updates.
            let _txn = fs.rw.txn_lock.lock().unwrap();
            let _wb = fs.rw.wb();
            std::thread::sleep(Duration::from_millis(2500));
            assert_ne!(disk.mmp().mmp_seq, first.mmp_seq, "the thread updates it");
        }
        assert!(!fs.is_read_only());
        fs.shutdown().unwrap();
        assert_eq!(disk.mmp().mmp_seq, EXT4_MMP_SEQ_CLEAN);
    }

    #[test]
    fn fsck_sequence_refuses_at_once() {
        let Some(d) = image() else { return };
        let disk = Disk::new(d);
        disk.forge(EXT4_MMP_SEQ_FSCK, "fsck-host");
        let (fs, waits) = disk.open(None);
        let e = fs.err().unwrap().to_string();
        assert!(
            e.contains("e2fsck is running") && e.contains("fsck-host"),
            "{e}"
        );
        assert!(waits.is_empty());
        // Read-only mounts take no part: allowed except under e2fsck.
        disk.forge(12345, "other");
        let ro = OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        };
        assert!(Ext4::open(disk.dev.clone(), ro).is_ok());
    }

    #[test]
    fn a_stale_holder_is_waited_out_and_claimed() {
        let Some(d) = image() else { return };
        let disk = Disk::new(d);
        // A node that crashed while mounted: "in use", never updated.
        disk.forge(12345, "crashed");
        let (fs, waits) = disk.open(None);
        let fs = fs.unwrap();
        assert_eq!(waits, [11, 11]);
        assert_eq!(name(&disk.mmp()), "node-a");
        fs.shutdown().unwrap();
    }

    #[test]
    fn a_live_holder_refuses_the_mount() {
        let Some(d) = image() else { return };
        let disk = Disk::new(d);
        disk.forge(100, "node-b");
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // node-b updates its sequence every second.
                let mut seq = 100;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    seq += 1;
                    disk.forge(seq, "node-b");
                }
            });
            let (fs, waits) = disk.open(None);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let e = fs.err().unwrap().to_string();
            assert!(
                e.contains("in use on another node") && e.contains("node-b"),
                "{e}"
            );
            assert_eq!(waits, [11]);
        });
    }

    #[test]
    fn a_foreign_write_fences_the_mount() {
        let Some(d) = image() else { return };
        let disk = Disk::new(d);
        let (fs, _) = disk.open(Some(ErrorBehaviour::Continue));
        let fs = fs.unwrap();
        let aborted = Arc::new(Mutex::new(None::<String>));
        disk.forge(777, "intruder");
        let t = Instant::now();
        while !fs.is_read_only() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Detected within two update intervals, even with errors=continue.
        assert!(fs.is_read_only(), "not fenced after {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(fs.fault().unwrap().contains("intruder"), "{:?}", fs.fault());
        let sb_before = disk.dev.contents()[1024..2048].to_vec();
        fs.shutdown().unwrap();
        drop(fs);
        // Nothing more was written: the intruder's block, our superblock as it was.
        assert_eq!(disk.mmp().mmp_seq, 777);
        assert_eq!(disk.dev.contents()[1024..2048], sb_before[..]);
        assert!(aborted.lock().unwrap().is_none());
    }

    #[test]
    fn errors_panic_aborts_on_a_foreign_write() {
        let Some(d) = image() else { return };
        let disk = Disk::new(d);
        let (fs, _) = disk.open(Some(ErrorBehaviour::Panic));
        let fs = fs.unwrap();
        let aborted = Arc::new(Mutex::new(None::<String>));
        let a = aborted.clone();
        fs.set_abort_hook(Box::new(move |why| {
            *a.lock().unwrap() = Some(why.to_owned())
        }));
        disk.forge(778, "intruder");
        let t = Instant::now();
        while aborted.lock().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let why = aborted
            .lock()
            .unwrap()
            .clone()
            .expect("abort hook not called");
        assert!(why.contains("intruder"), "{why}");
    }
}

//! The randomized differential test: one seeded sequence of operations
//! (see `safemount_tests::ops`) applied to a read-write safemount mount and
//! to the kernel's ext4 on a second image made with the same mkfs options
//! (same UUID and htree hash seed). Every operation's outcome (errno
//! included) must agree; then the live trees, `e2fsck -fn` on both images,
//! and kernel mounts of both images (on-disk state: sizes, blocks, holes,
//! xattrs, explicitly set times, statfs) must agree too.
//!
//! Environment: `SAFEMOUNT_DIFF_SEED` (a number), `SAFEMOUNT_DIFF_OPS`
//! (default 3000), `SAFEMOUNT_DIFF_SUT=kernel` (both sides kernel: checks
//! the harness itself), `SAFEMOUNT_DIFF_SKIP=SetAcl,Rename` (generate but
//! do not apply those kinds of operation: to look past a known divergence
//! while debugging; the sequence stays the same), `SAFEMOUNT_DIFF_LAX_BLOCKS=1`
//! (report i_blocks differences without failing).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use safemount_tests::broker::Broker;
use safemount_tests::image::fsck_clean;
use safemount_tests::kernel::KernelMount;
use safemount_tests::ops::{self, GenOpts, Generator, KernelRw, Op, Outcome};
use safemount_tests::snapshot::{self, Against, Snapshot, WalkOpts};
use safemount_tests::util::{TempDir, require_root};

/// One config at a time: the machine is small and each run mounts twice.
static SERIAL: Mutex<()> = Mutex::new(());

const IMAGE_SIZE: u64 = 512 << 20;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn default_seed(name: &str) -> u64 {
    name.bytes()
        .fold(0x5afe_d1ff_u64, |h, b| h.rotate_left(7) ^ u64::from(b))
}

/// Times within a day of now were taken from the clock, not set by an
/// operation: they cannot agree between two mounts. Every other time was
/// set explicitly and must agree to the nanosecond. ctime is always the
/// clock's.
fn normalize(s: &mut Snapshot, keep_blocks: bool) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let clocky = |t: (i64, i64)| (t.0 - now).abs() < 86_400;
    for e in s.entries.values_mut() {
        for t in [&mut e.atime, &mut e.mtime] {
            if clocky(*t) {
                *t = (0, 0);
            }
        }
        e.ctime = (0, 0);
        e.ino = 0;
        if !keep_blocks {
            e.blocks = 0;
        }
    }
}

fn compare(expected: &Snapshot, actual: &Snapshot, keep_blocks: bool) -> Vec<String> {
    let (mut x, mut a) = (expected.clone(), actual.clone());
    normalize(&mut x, keep_blocks);
    normalize(&mut a, keep_blocks);
    snapshot::diff(&x, &a, Against::Kernel)
}

/// The system under test, mounted read-write.
enum Sut {
    Safemount(Broker),
    Kernel(KernelRw),
}

impl Sut {
    fn mount(img: &Path, mnt: &Path) -> Sut {
        if std::env::var("SAFEMOUNT_DIFF_SUT").is_ok_and(|v| v == "kernel") {
            return Sut::Kernel(KernelRw::mount(img, mnt).unwrap());
        }
        let broker = Broker::start().unwrap();
        if let Err(e) = broker.mount(img, mnt, "rw,noatime") {
            panic!(
                "safemount rw mount failed: {e}\nbroker log:\n{}",
                broker.log_tail(30)
            );
        }
        Sut::Safemount(broker)
    }

    fn unmount(self, mnt: &Path) -> Result<(), String> {
        match self {
            Sut::Kernel(k) => k.unmount().map_err(|e| format!("{e:#}")),
            Sut::Safemount(b) => {
                let r = b.unmount(mnt).map_err(|e| e.to_string());
                if r.is_err() {
                    eprintln!("broker log:\n{}", b.log_tail(40));
                }
                r
            }
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Sut::Safemount(b) => b.log_tail(30),
            Sut::Kernel(_) => String::new(),
        }
    }
}

struct Divergence {
    index: usize,
    op: Op,
    sut: Outcome,
    kernel: Outcome,
}

fn run_config(name: &str, mkfs_args: &[&str], block_size: u32) {
    if !require_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let seed = env_u64("SAFEMOUNT_DIFF_SEED").unwrap_or_else(|| default_seed(name));
    let n_ops = env_u64("SAFEMOUNT_DIFF_OPS").unwrap_or(3000) as usize;
    println!("[{name}] seed {seed}, {n_ops} operations (SAFEMOUNT_DIFF_SEED={seed} to replay)");

    let tmp = TempDir::new(&format!("diff-{name}")).unwrap();
    let (img_a, img_b) = (tmp.join("sut.img"), tmp.join("kernel.img"));
    ops::make_empty_image(&img_a, mkfs_args, IMAGE_SIZE).unwrap();
    ops::make_empty_image(&img_b, mkfs_args, IMAGE_SIZE).unwrap();
    let (mnt_a, mnt_b) = (tmp.join("sut"), tmp.join("kernel"));
    std::fs::create_dir(&mnt_a).unwrap();
    std::fs::create_dir(&mnt_b).unwrap();

    let kernel = KernelRw::mount(&img_b, &mnt_b).unwrap();
    let sut = Sut::mount(&img_a, &mnt_a);

    let mut generator = Generator::new(
        seed,
        GenOpts {
            block_size,
            ..GenOpts::default()
        },
    );
    let mut divergence = None;
    let mut failed_ops = 0usize;
    let skip: Vec<String> = std::env::var("SAFEMOUNT_DIFF_SKIP")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut skipped = 0usize;
    // The last operations, for the failure message.
    let mut recent: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for index in 0..n_ops {
        let op = generator.next_op();
        let kind = format!("{op:?}");
        let kind = kind.split([' ', '{']).next().unwrap_or_default();
        if skip.iter().any(|s| s == kind) {
            skipped += 1;
            continue;
        }
        let sut_out = ops::apply(&mnt_a, &op);
        let kernel_out = ops::apply(&mnt_b, &op);
        if sut_out != kernel_out {
            if let Op::OrphanWrite { path, .. } | Op::Write { path, .. } = &op {
                recent.push_back(format!(
                    "(after) stat {path}: safemount {:?}, kernel {:?}",
                    ops::apply(&mnt_a, &Op::Stat { path: path.clone() }),
                    ops::apply(&mnt_b, &Op::Stat { path: path.clone() })
                ));
            }
            divergence = Some(Divergence {
                index,
                op,
                sut: sut_out,
                kernel: kernel_out,
            });
            break;
        }
        if kernel_out.is_err() {
            failed_ops += 1;
        }
        if recent.len() >= 12 {
            recent.pop_front();
        }
        recent.push_back(format!("#{index} {} -> {kernel_out:?}", ops::describe(&op)));
        // The kernel's outcome drives the model: the oracle decides which
        // paths exist (and so which symlinks are never walked through).
        generator.observe(&op, &kernel_out);
    }
    if let Some(d) = &divergence {
        let log = sut.log_tail();
        let _ = sut.unmount(&mnt_a);
        panic!(
            "[{name}] seed {seed}: first divergence at operation {}:\n  op: {}\n  safemount: {:?}\n  kernel:    {:?}\nbefore it (kernel outcomes, equal on both):\n  {}\nworker log:\n{log}",
            d.index,
            ops::describe(&d.op),
            d.sut,
            d.kernel,
            recent.iter().cloned().collect::<Vec<_>>().join("\n  ")
        );
    }
    println!(
        "[{name}] {} operations agree ({failed_ops} failed the same way on both, {skipped} skipped), {} paths in the model",
        n_ops - skipped,
        generator.model.len()
    );

    // Live trees (attributes as the FUSE mount shows them; blocks are
    // compared on disk below).
    let walk = WalkOpts::default();
    let live_a = snapshot::snapshot(&mnt_a, &walk);
    let live_b = snapshot::snapshot(&mnt_b, &walk);
    // Hole maps only on disk (below): a live kernel reports unwritten
    // extents whose pages are cached as data.
    let strip = |s: &Snapshot| {
        let mut s = s.clone();
        for e in s.entries.values_mut() {
            e.data_map = None;
        }
        s
    };
    let live_diff = compare(&strip(&live_b), &strip(&live_a), false);

    let unmounted = sut.unmount(&mnt_a);
    kernel.unmount().unwrap();
    assert!(
        live_diff.is_empty(),
        "[{name}] seed {seed}: live trees differ ({} differences):\n  {}",
        live_diff.len(),
        live_diff
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    unmounted.unwrap();
    fsck_clean(&img_b).expect("kernel image clean (harness check)");
    if let Err(e) = fsck_clean(&img_a) {
        panic!("[{name}] seed {seed}: safemount's image is not clean: {e:#}");
    }

    // On-disk state, both read by the kernel.
    let disk_a = KernelMount::mount(&img_a, &mnt_a).unwrap();
    let disk_b = KernelMount::mount(&img_b, &mnt_b).unwrap();
    let snap_a = snapshot::snapshot(&mnt_a, &walk);
    let snap_b = snapshot::snapshot(&mnt_b, &walk);
    let stat_a = snapshot::statvfs(&mnt_a).unwrap();
    let stat_b = snapshot::statvfs(&mnt_b).unwrap();
    disk_a.unmount().unwrap();
    disk_b.unmount().unwrap();
    // SAFEMOUNT_DIFF_LAX_BLOCKS=1: print i_blocks differences (extent
    // tree or xattr block layout) but do not fail on them.
    let lax = std::env::var("SAFEMOUNT_DIFF_LAX_BLOCKS").is_ok_and(|v| v == "1");
    let d: Vec<String> = compare(&snap_b, &snap_a, true)
        .into_iter()
        .filter(|l| {
            let only_blocks = l.contains(": blocks expected");
            if lax && only_blocks {
                println!("[{name}] (lax) {l}");
            }
            !(lax && only_blocks)
        })
        .collect();
    assert!(
        d.is_empty(),
        "[{name}] seed {seed}: kernel mounts of the two images differ ({} differences):\n  {}",
        d.len(),
        d.iter().take(25).cloned().collect::<Vec<_>>().join("\n  ")
    );
    let live_vs_disk = compare(&strip(&live_a), &strip(&snap_a), false);
    assert!(
        live_vs_disk.is_empty(),
        "[{name}] seed {seed}: the kernel does not see what the mount showed:\n  {}",
        live_vs_disk
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert_eq!(
        (stat_a.bfree, stat_a.ffree, stat_a.blocks, stat_a.files),
        (stat_b.bfree, stat_b.ffree, stat_b.blocks, stat_b.files),
        "[{name}] seed {seed}: statfs (free blocks, free inodes, blocks, inodes) differ from the kernel's image"
    );
    println!(
        "[{name}] seed {seed}: {} entries agree on disk, e2fsck clean",
        snap_a.entries.len()
    );
}

#[test]
fn differential_defaults() {
    run_config("defaults", &[], 4096);
}

#[test]
fn differential_ext2() {
    run_config("ext2", &["-t", "ext2"], 4096);
}

#[test]
fn differential_ext3() {
    run_config("ext3", &["-t", "ext3"], 4096);
}

#[test]
fn differential_inline_data() {
    run_config("inline_data", &["-O", "inline_data"], 4096);
}

#[test]
fn differential_block1024() {
    run_config("block1024", &["-b", "1024"], 1024);
}

#[test]
fn differential_no_metadata_csum() {
    run_config("no_metadata_csum", &["-O", "^metadata_csum"], 4096);
}

//! Multi-mount protection (MMP) end to end: the real broker, worker and
//! FUSE, on real loop devices. Two loop devices over one image stand for
//! two hosts sharing a disk (both go through the image file's page cache,
//! so each sees the other's writes; the worker itself uses O_DIRECT).
//!
//! The images are `mkfs.ext4 -O mmp,^metadata_csum -E mmp_update_interval=1`
//! (no metadata_csum: the MMP block is forged with plain byte writes; one
//! kernel scenario also runs with metadata_csum). A
//! read-write mount of such a filesystem waits 2 x 5 + 1 s to claim it, a
//! mount over a block that is "in use" twice that, so each scenario is its
//! own test (they run in parallel) and keeps its mounts few:
//!
//! - a second read-write mount through another device is refused, naming
//!   the holder; a read-only one is allowed;
//! - the kernel's ext4 on the other device: refused while safemount holds
//!   the block, and it holds the block against safemount;
//! - e2fsck's sequence refuses at once;
//! - a foreign write to the block while mounted fences the mount (with
//!   errors=panic it aborts it), and nothing more is written;
//! - a killed worker leaves the block in use, the next mount waits and
//!   claims it; a stopped one lets the kernel take over and is fenced
//!   when it runs again;
//! - a mount of a block device uses O_DIRECT, one of an image file does
//!   not; data with partial blocks reaches the disk; a clean unmount writes
//!   the clean sequence, also for a read-write open served read-only.
//!
//! With libtest's default of one thread per core the binary takes about
//! 2 minutes on 2 cores; `-- --test-threads=11` runs every scenario at
//! once (about 35 s: they mostly wait).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image::{debugfs, fsck_clean};
use safemount_tests::loopdev::LoopDevice;
use safemount_tests::procfs;
use safemount_tests::util::{
    SETTLE, TempDir, pattern, require_root, run, run_ok, sha256_file, wait_until,
};

/// EXT4_MMP_SEQ_CLEAN and EXT4_MMP_SEQ_FSCK.
const SEQ_CLEAN: u32 = 0xFF4D_4D50;
const SEQ_FSCK: u32 = 0xE24D_4D50;
/// O_DIRECT in /proc/PID/fdinfo's octal `flags:`: libc's value for the
/// architecture (040000 on x86_64, 0200000 on arm64).
const O_DIRECT_FLAG: u32 = libc::O_DIRECT as u32;

/// Whether the test can run: root, /dev/fuse, and a worker to test.
fn ready() -> bool {
    if !require_root() {
        return false;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no multi-mount protection to test");
        return false;
    }
    true
}

/// This host's node name, as the worker and the kernel write it.
fn node_name() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// An MMP image and where its MMP block is.
struct MmpImage {
    path: PathBuf,
    block: u64,
    block_size: u64,
}

/// The fields of `struct mmp_struct` the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mmp {
    seq: u32,
    node: String,
    device: String,
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl MmpImage {
    /// A fresh 64 MiB MMP filesystem with a 1 s update interval, without
    /// metadata_csum (so the block can be forged with plain bytes).
    fn make(tmp: &TempDir, name: &str) -> MmpImage {
        Self::make_with(tmp, name, "mmp,^metadata_csum")
    }

    /// The same with the features `-O features` asks for.
    fn make_with(tmp: &TempDir, name: &str, features: &str) -> MmpImage {
        let path = tmp.join(name);
        File::create(&path).unwrap().set_len(64 << 20).unwrap();
        run_ok(
            "mkfs.ext4",
            [
                "-q".as_ref(),
                "-F".as_ref(),
                "-O".as_ref(),
                features.as_ref(),
                "-E".as_ref(),
                "mmp_update_interval=1".as_ref(),
                path.as_os_str(),
            ],
        )
        .unwrap();
        let out = run_ok("dumpe2fs", ["-h".as_ref(), path.as_os_str()]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("dumpe2fs -h has no {name:?}:\n{text}"))
                .trim()
                .parse()
                .unwrap()
        };
        let img = MmpImage {
            block: field("MMP block number:"),
            block_size: field("Block size:"),
            path,
        };
        assert_eq!(img.read().seq, SEQ_CLEAN, "harness: a fresh MMP block");
        img
    }

    fn offset(&self) -> u64 {
        self.block * self.block_size
    }

    /// The MMP block's bytes, read from the image file (loop devices write
    /// through its page cache, so this sees what either of them wrote).
    fn raw(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.block_size as usize];
        File::open(&self.path)
            .unwrap()
            .read_exact_at(&mut buf, self.offset())
            .unwrap();
        buf
    }

    fn read(&self) -> Mmp {
        let b = self.raw();
        assert_eq!(
            u32::from_le_bytes(b[0..4].try_into().unwrap()),
            0x004D_4D50,
            "MMP magic"
        );
        Mmp {
            seq: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            node: cstr(&b[16..80]),
            device: cstr(&b[80..112]),
        }
    }

    /// Writes the MMP block with `seq`, `node` and `device` (the rest as it
    /// is) through `dev`, a loop device over the image, with O_DIRECT: it
    /// reaches the image below every page cache of a block device, as a
    /// write by another host would.
    fn forge(&self, dev: &Path, seq: u32, node: &str, device: &str, scratch: &Path) {
        let mut b = self.raw();
        b[4..8].copy_from_slice(&seq.to_le_bytes());
        b[16..80].fill(0);
        b[16..16 + node.len()].copy_from_slice(node.as_bytes());
        b[80..112].fill(0);
        b[80..80 + device.len()].copy_from_slice(device.as_bytes());
        fs::write(scratch, &b).unwrap();
        run_ok(
            "dd",
            [
                format!("if={}", scratch.display()),
                format!("of={}", dev.display()),
                format!("bs={}", self.block_size),
                format!("seek={}", self.block),
                "count=1".to_owned(),
                "oflag=direct".to_owned(),
                "conv=notrunc".to_owned(),
                "status=none".to_owned(),
            ],
        )
        .unwrap();
    }

    /// `debugfs -R dump_mmp`'s "sequence:" field.
    fn debugfs_seq(&self) -> String {
        let out = debugfs(&self.path, "dump_mmp").unwrap();
        out.lines()
            .find_map(|l| l.trim().strip_prefix("sequence:"))
            .unwrap_or_else(|| panic!("dump_mmp printed no sequence:\n{out}"))
            .trim()
            .to_owned()
    }

    /// After a clean unmount: the clean sequence, e2fsck clean, tune2fs
    /// reads it.
    fn assert_released(&self, what: &str) {
        assert_eq!(self.debugfs_seq(), "ff4d4d50", "{what}: dump_mmp sequence");
        assert_eq!(self.read().seq, SEQ_CLEAN, "{what}");
        if let Err(e) = fsck_clean(&self.path) {
            panic!("{what}: {e:#}");
        }
        let out = run_ok("tune2fs", ["-l".as_ref(), self.path.as_os_str()]).unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("MMP block number:"),
            "{what}: tune2fs -l"
        );
    }
}

/// What one `safemount mount` did.
struct MountRun {
    ok: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl std::fmt::Display for MountRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} after {:.1} s (stdout: {:?}, stderr: {:?})",
            if self.ok { "mounted" } else { "failed" },
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// `safemount mount SRC MNT -o OPTS`, keeping the client's stderr (where
/// it tells about waits).
fn mount(broker: &Broker, src: &Path, mnt: &Path, opts: &str) -> MountRun {
    fs::create_dir_all(mnt).unwrap();
    let t = Instant::now();
    let out = broker
        .client(&[
            "mount".as_ref(),
            src.as_os_str(),
            mnt.as_os_str(),
            "-o".as_ref(),
            opts.as_ref(),
        ])
        .unwrap();
    MountRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t.elapsed(),
    }
}

fn mount_ok(broker: &Broker, src: &Path, mnt: &Path, opts: &str) -> MountRun {
    let r = mount(broker, src, mnt, opts);
    assert!(
        r.ok && procfs::is_mounted(mnt),
        "mount {} -o {opts}: {r}\n{}",
        src.display(),
        broker.log_tail(30)
    );
    r
}

/// The client's line about the wait of a claim.
fn assert_told_wait(r: &MountRun, what: &str) {
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("safemount: multi-mount protection:") && l.ends_with(" s)")),
        "{what}: the client did not say it waits: {r}"
    );
}

fn unmount_ok(broker: &Broker, mnt: &Path) {
    broker
        .unmount(mnt)
        .unwrap_or_else(|e| panic!("unmount {}: {e}\n{}", mnt.display(), broker.log_tail(30)));
    assert!(!procfs::is_mounted(mnt), "{} still mounted", mnt.display());
}

/// Writes `data` to a new file and fsyncs it.
fn write_synced(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The kernel's ext4 mounted read-write on a device; unmounted on drop if
/// the test did not.
struct KernelRw {
    mnt: PathBuf,
    mounted: bool,
}

impl KernelRw {
    fn try_mount(dev: &Path, mnt: &Path) -> Result<KernelRw, String> {
        fs::create_dir_all(mnt).unwrap();
        // Nothing stale in the device's own page cache.
        let _ = run("blockdev", ["--flushbufs".as_ref(), dev.as_os_str()]);
        let out = run(
            "mount",
            [
                "-t".as_ref(),
                "ext4".as_ref(),
                "-o".as_ref(),
                "rw".as_ref(),
                dev.as_os_str(),
                mnt.as_os_str(),
            ],
        )
        .unwrap();
        if out.status.success() {
            Ok(KernelRw {
                mnt: mnt.to_path_buf(),
                mounted: true,
            })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    fn unmount(mut self) {
        run_ok("umount", [&self.mnt]).unwrap();
        self.mounted = false;
    }
}

impl Drop for KernelRw {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run("umount", ["-l".as_ref(), self.mnt.as_os_str()]);
        }
    }
}

/// The `flags:` of /proc/PID/fdinfo for the worker's fd on `target` (the
/// path its /proc/PID/fd link shows).
fn fd_flags(pid: i32, target: &Path) -> u32 {
    let want = target.to_string_lossy();
    let fds = procfs::fds(pid).unwrap();
    let (fd, _) = fds
        .iter()
        .find(|(_, link)| *link == want)
        .unwrap_or_else(|| panic!("worker {pid} has no fd on {want}: {fds:?}"));
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or_else(|| panic!("no flags in fdinfo: {info}"))
        .trim();
    u32::from_str_radix(flags, 8).unwrap()
}

/// a. Two devices over one image: read-write through A claims (and the
/// client says it waits); read-write through B is refused naming A's
/// node and device; read-only through B is allowed (read-only mounts take
/// no part in MMP). Clean unmount releases the block.
#[test]
fn second_rw_mount_through_another_device_is_refused() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-two").unwrap();
    let img = MmpImage::make(&tmp, "two.img");
    let a = LoopDevice::attach(&img.path, false).unwrap();
    let b = LoopDevice::attach(&img.path, false).unwrap();
    let broker = Broker::start().unwrap();
    let (mnt_a, mnt_b) = (tmp.join("a"), tmp.join("b"));

    let first = mount_ok(&broker, a.path(), &mnt_a, "rw");
    assert_told_wait(&first, "rw mount through A");
    write_synced(&mnt_a.join("from-a"), b"written through A\n").unwrap();
    let held = img.read();
    assert_eq!(
        (held.node.as_str(), held.device.as_str()),
        (node_name().as_str(), a.name().as_str()),
        "the claim names this node and device A: {held:?}"
    );
    assert!(held.seq != SEQ_CLEAN && held.seq != SEQ_FSCK, "{held:?}");

    let second = mount(&broker, b.path(), &mnt_b, "rw");
    assert!(!second.ok, "a second rw mount through B: {second}");
    assert!(!procfs::is_mounted(&mnt_b));
    assert_told_wait(&second, "rw mount through B");
    let holder = format!("node \"{}\", device \"{}\"", node_name(), a.name());
    assert!(
        second.stderr.contains("in use on another node") && second.stderr.contains(&holder),
        "the refusal names the holder ({holder}): {second}"
    );
    assert!(
        broker.entry_for(&mnt_b).unwrap().is_none(),
        "the refused mount is not listed"
    );

    // Read-only: no claim, no wait.
    let ro = mount_ok(&broker, b.path(), &mnt_b, "ro");
    assert!(
        !ro.stderr.contains("multi-mount protection"),
        "a read-only mount waited: {ro}"
    );
    assert!(fs::read_dir(&mnt_b).unwrap().count() > 0);
    unmount_ok(&broker, &mnt_b);
    // A still holds the block and serves.
    assert_eq!(
        fs::read(mnt_a.join("from-a")).unwrap(),
        b"written through A\n"
    );
    let still = img.read();
    assert_eq!(still.device, a.name(), "{still:?}");

    unmount_ok(&broker, &mnt_a);
    img.assert_released("after A's unmount");
    eprintln!(
        "mmp two devices: claim {:.1} s, refusal {:.1} s: {}",
        first.took.as_secs_f64(),
        second.took.as_secs_f64(),
        second.stderr.trim()
    );
}

/// b. The kernel's ext4 on the other device: refused while safemount
/// holds the block; once safemount has unmounted it mounts, and then holds
/// the block against safemount; it unmounts cleanly afterwards.
#[test]
fn kernel_and_safemount_exclude_each_other() {
    kernel_exclusion("mmp-kernel", "mmp,^metadata_csum");
}

/// b with metadata_csum: the kernel and e2fsck check the MMP block's
/// checksum (a wrong one would make the kernel refuse at once, and refuse
/// after safemount's unmount too), and the worker checks the kernel's.
#[test]
fn kernel_and_safemount_exclude_each_other_with_metadata_csum() {
    kernel_exclusion("mmp-kernel-csum", "mmp,metadata_csum");
}

fn kernel_exclusion(tag: &str, features: &str) {
    if !ready() {
        return;
    }
    let tmp = TempDir::new(tag).unwrap();
    let img = MmpImage::make_with(&tmp, "kernel.img", features);
    let a = LoopDevice::attach(&img.path, false).unwrap();
    let b = LoopDevice::attach(&img.path, false).unwrap();
    let broker = Broker::start().unwrap();
    let (mnt_a, mnt_k) = (tmp.join("a"), tmp.join("kernel"));

    mount_ok(&broker, a.path(), &mnt_a, "rw");
    write_synced(&mnt_a.join("safemount"), b"safemount was here\n").unwrap();
    let t = Instant::now();
    match KernelRw::try_mount(b.path(), &mnt_k) {
        Ok(k) => {
            k.unmount();
            panic!("the kernel mounted B while safemount holds the MMP block through A");
        }
        // EBUSY, as for a busy device: what says it is MMP is that the
        // kernel watched the block for its wait time (2 x 5 + 1 s) first.
        Err(e) => {
            let took = t.elapsed();
            assert!(
                took >= Duration::from_secs(10),
                "the kernel refused after {took:?}, without watching the MMP block: {e}"
            );
            eprintln!("[{tag}] the kernel refused after {took:.1?}, as it should: {e}");
        }
    }
    assert_eq!(
        img.read().device,
        a.name(),
        "safemount still holds the block"
    );
    unmount_ok(&broker, &mnt_a);
    assert_eq!(img.read().seq, SEQ_CLEAN);
    // e2fsck reads (and with metadata_csum verifies) the block we left.
    fsck_clean(&img.path).unwrap();

    let kernel = KernelRw::try_mount(b.path(), &mnt_k)
        .unwrap_or_else(|e| panic!("the kernel could not mount after safemount's unmount: {e}"));
    assert_eq!(
        fs::read(mnt_k.join("safemount")).unwrap(),
        b"safemount was here\n"
    );
    fs::write(mnt_k.join("kernel"), b"the kernel was here\n").unwrap();
    let held = img.read();
    assert_eq!(held.device, b.name(), "the kernel's claim: {held:?}");

    let refused = mount(&broker, a.path(), &mnt_a, "rw");
    assert!(
        !refused.ok,
        "safemount mounted while the kernel holds it: {refused}"
    );
    assert!(!procfs::is_mounted(&mnt_a));
    let holder = format!("device \"{}\"", b.name());
    assert!(
        refused.stderr.contains("in use on another node") && refused.stderr.contains(&holder),
        "the refusal names the kernel's device ({holder}): {refused}"
    );

    kernel.unmount();
    assert_eq!(img.read().seq, SEQ_CLEAN, "the kernel released the block");
    fsck_clean(&img.path).unwrap();
    eprintln!("[{tag}] safemount refused: {}", refused.stderr.trim());
}

/// c. e2fsck's sequence in the block: refused at once, saying so.
#[test]
fn fsck_sequence_refuses_at_once() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-fsck").unwrap();
    let img = MmpImage::make(&tmp, "fsck.img");
    let a = LoopDevice::attach(&img.path, false).unwrap();
    img.forge(a.path(), SEQ_FSCK, "fsckhost", "sdq", &tmp.join("forged"));
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    let r = mount(&broker, a.path(), &mnt, "rw");
    assert!(!r.ok && !procfs::is_mounted(&mnt), "{r}");
    assert!(r.stderr.contains("e2fsck is running"), "{r}");
    assert!(r.took < Duration::from_secs(5), "the refusal waited: {r}");
    assert_eq!(
        img.read(),
        Mmp {
            seq: SEQ_FSCK,
            node: "fsckhost".into(),
            device: "sdq".into()
        },
        "the refused mount wrote the block"
    );
}

/// d. Another node writes the block while mounted: the mount is fenced
/// (read-only, the error in `safemount list`), reads go on, writes fail
/// with EROFS, it unmounts, and nothing more is written to the disk.
#[test]
fn foreign_write_fences_the_mount() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-fence").unwrap();
    let img = MmpImage::make(&tmp, "fence.img");
    let a = LoopDevice::attach(&img.path, false).unwrap();
    let b = LoopDevice::attach(&img.path, false).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    mount_ok(&broker, a.path(), &mnt, "rw");
    let data = pattern(7, 300_001);
    write_synced(&mnt.join("before"), &data).unwrap();
    let intruder = Mmp {
        seq: 0x1234_5678,
        node: "intruder".into(),
        device: "sdz".into(),
    };

    // The update thread reads, compares and writes; a forged block that
    // lands between its read and its write is overwritten (as with the
    // kernel). Then it is forged again.
    let mut entry = None;
    let mut fenced = false;
    for _ in 0..3 {
        img.forge(
            b.path(),
            intruder.seq,
            &intruder.node,
            &intruder.device,
            &tmp.join("forged"),
        );
        // Two update intervals plus the health poll, generously.
        fenced = wait_until(Duration::from_secs(15), || {
            entry = broker.entry_for(&mnt).unwrap();
            entry.as_ref().is_some_and(|e| e.error.is_some()) || img.read() != intruder
        }) && entry.as_ref().is_some_and(|e| e.error.is_some());
        if fenced {
            break;
        }
    }
    assert!(
        fenced,
        "list never showed the fence: {entry:?}, block {:?}\n{}",
        img.read(),
        broker.log_tail(30)
    );
    let entry = entry.unwrap();
    let error = entry.error.clone().unwrap();
    assert!(
        error.contains("multi-mount protection") && error.contains("intruder"),
        "{error}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || broker
            .entry_for(&mnt)
            .unwrap()
            .is_some_and(|e| e.read_only == Some(true))),
        "list does not show the mount read-only: {entry:?}"
    );
    let out = broker.client(&["list".as_ref()]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("ERROR") && table.contains("intruder"),
        "{table}"
    );

    let e = fs::write(mnt.join("after"), b"x").expect_err("a write after the fence");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = fs::create_dir(mnt.join("dir")).expect_err("a mkdir after the fence");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert!(fs::read(mnt.join("before")).unwrap() == data, "reads go on");
    assert!(fs::read_dir(&mnt).unwrap().count() >= 1);

    // Nothing more is written: not the next sequence, not at unmount.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(img.read(), intruder, "the fenced mount wrote the block");
    let sha = sha256_file(&img.path).unwrap();
    unmount_ok(&broker, &mnt);
    assert_eq!(img.read(), intruder, "the unmount wrote the block");
    assert_eq!(
        sha,
        sha256_file(&img.path).unwrap(),
        "the fenced mount's unmount wrote to the disk"
    );
    eprintln!("mmp fence: list says: {error}");
}

/// f. SIGKILL of the worker: the broker cleans up; the block stays "in
/// use" (as after a crash); the next mount says it waits, waits, and
/// claims; its clean unmount releases the block.
#[test]
fn killed_worker_leaves_block_in_use_and_next_mount_claims() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-kill").unwrap();
    let img = MmpImage::make(&tmp, "kill.img");
    let a = LoopDevice::attach(&img.path, false).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    mount_ok(&broker, a.path(), &mnt, "rw");
    let data = pattern(11, 123_457);
    write_synced(&mnt.join("synced"), &data).unwrap();
    let pid = broker.worker_pid(&mnt).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(SETTLE, || !procfs::pid_alive(pid)
            && !procfs::is_mounted(&mnt)
            && broker.entry_for(&mnt).unwrap().is_none()),
        "the broker did not clean up after the killed worker\n{}",
        broker.log_tail(30)
    );
    let left = img.read();
    assert!(
        left.seq != SEQ_CLEAN && left.node == node_name() && left.device == a.name(),
        "a killed worker leaves its claim: {left:?}"
    );

    // The broker serves other clients while a mount waits.
    let (again, list_took, listed) = std::thread::scope(|s| {
        let remount = s.spawn(|| mount(&broker, a.path(), &mnt, "rw"));
        std::thread::sleep(Duration::from_secs(3));
        let t = Instant::now();
        let listed = broker.list().unwrap();
        let took = t.elapsed();
        (remount.join().unwrap(), took, listed)
    });
    assert!(
        again.ok && procfs::is_mounted(&mnt),
        "the mount after the kill: {again}\n{}",
        broker.log_tail(30)
    );
    assert!(
        list_took < Duration::from_secs(3),
        "`safemount list` took {list_took:?} while a mount waited for MMP"
    );
    assert!(
        listed
            .iter()
            .any(|e| Path::new(&e.source) == a.path() && e.state == "Starting"),
        "the waiting mount is listed as starting: {listed:?}"
    );
    eprintln!(
        "mmp kill: list during the wait ({list_took:?}): {:?}",
        listed
            .iter()
            .map(|e| (&e.source, &e.state))
            .collect::<Vec<_>>()
    );
    assert_told_wait(&again, "mount after the kill");
    assert!(
        again.stderr.contains("last in use by"),
        "the client says who had it: {again}"
    );
    assert!(
        again.took >= Duration::from_secs(20),
        "the mount over an in-use block waited twice: {again}"
    );
    assert!(fs::read(mnt.join("synced")).unwrap() == data);
    write_synced(&mnt.join("after"), b"after the kill\n").unwrap();
    let ours = img.read();
    assert!(ours.seq != left.seq && ours.device == a.name(), "{ours:?}");
    unmount_ok(&broker, &mnt);
    img.assert_released("after the remount's unmount");
    eprintln!(
        "mmp kill: remount took {:.1} s: {}",
        again.took.as_secs_f64(),
        again.stderr.trim()
    );
}

/// Files whose sizes and overwrites cut blocks and sectors at odd places:
/// (name, expected content), written and fsync'd under `mnt`.
fn write_ragged_files(mnt: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (i, len) in [1usize, 511, 1023, 1025, 4095, 4097, 65_537, 1_000_003]
        .into_iter()
        .enumerate()
    {
        let name = format!("ragged-{len}");
        let data = pattern(100 + i as u64, len);
        write_synced(&mnt.join(&name), &data).unwrap();
        files.push((name, data));
    }
    // Overwrites inside and past the end of a file, at unaligned offsets.
    let name = "ragged-65537".to_owned();
    let mut want = files.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let f = OpenOptions::new()
        .write(true)
        .open(mnt.join(&name))
        .unwrap();
    for (off, len, seed) in [(1000usize, 3000usize, 1u64), (60_001, 10_000, 2), (7, 5, 3)] {
        let patch = pattern(seed, len);
        f.write_all_at(&patch, off as u64).unwrap();
        if want.len() < off + len {
            want.resize(off + len, 0);
        }
        want[off..off + len].copy_from_slice(&patch);
    }
    f.sync_all().unwrap();
    drop(f);
    files.retain(|(n, _)| *n != name);
    files.push((name, want));
    files
}

/// g (block device). A read-write mount through a loop device runs with
/// O_DIRECT on its device fd; data cut at odd places reads back, and is on
/// the disk after the unmount (debugfs); e. the clean unmount writes the
/// clean sequence, e2fsck finds nothing, tune2fs reads it.
#[test]
fn block_device_mount_uses_direct_io_and_releases_cleanly() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-direct").unwrap();
    let img = MmpImage::make(&tmp, "direct.img");
    let a = LoopDevice::attach(&img.path, false).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    mount_ok(&broker, a.path(), &mnt, "rw");
    let pid = broker.worker_pid(&mnt).unwrap();
    let flags = fd_flags(pid, a.path());
    assert!(
        flags & O_DIRECT_FLAG != 0,
        "the worker's fd on {} has flags {flags:o}, without O_DIRECT ({O_DIRECT_FLAG:o})",
        a.path().display()
    );

    let files = write_ragged_files(&mnt);
    for (name, want) in &files {
        assert!(
            fs::read(mnt.join(name)).unwrap() == *want,
            "{name} reads back"
        );
    }
    unmount_ok(&broker, &mnt);
    img.assert_released("after the unmount");
    let out = tmp.join("dumped");
    for (name, want) in &files {
        debugfs(&img.path, &format!("dump /{name} {}", out.display())).unwrap();
        assert!(
            fs::read(&out).unwrap() == *want,
            "{name} on the disk (debugfs dump) differs"
        );
    }
}

/// g (image file). A read-write mount of the image file itself claims the
/// block too, but its fd has no O_DIRECT (nothing else shares a page cache
/// with it in a way that needs it).
#[test]
fn image_file_mount_does_not_use_direct_io() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-file").unwrap();
    let img = MmpImage::make(&tmp, "file.img");
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    let r = mount_ok(&broker, &img.path, &mnt, "rw");
    assert_told_wait(&r, "rw mount of the image file");
    let pid = broker.worker_pid(&mnt).unwrap();
    let target = fs::canonicalize(&img.path).unwrap();
    let flags = fd_flags(pid, &target);
    assert!(
        flags & O_DIRECT_FLAG == 0,
        "the worker's fd on the image file has O_DIRECT: {flags:o}"
    );
    let held = img.read();
    assert!(
        held.seq != SEQ_CLEAN && held.node == node_name(),
        "{held:?}"
    );
    let files = write_ragged_files(&mnt);
    for (name, want) in &files {
        assert!(fs::read(mnt.join(name)).unwrap() == *want, "{name}");
    }
    unmount_ok(&broker, &mnt);
    img.assert_released("after the image file's unmount");
}

/// e. A read-write mount that the engine serves read-only from the start
/// (here: a group descriptor checksum fails) still holds the MMP block
/// while mounted, and its unmount releases it (the kernel's kmmpd writes
/// the clean sequence at unmount whatever the mount's state).
#[test]
fn read_only_fallback_still_releases_the_block() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-rofallback").unwrap();
    let path = tmp.join("gdt.img");
    File::create(&path).unwrap().set_len(64 << 20).unwrap();
    run_ok(
        "mkfs.ext4",
        [
            "-q".as_ref(),
            "-F".as_ref(),
            "-b".as_ref(),
            "1024".as_ref(),
            "-O".as_ref(),
            "mmp,^metadata_csum,uninit_bg".as_ref(),
            "-E".as_ref(),
            "mmp_update_interval=1".as_ref(),
            path.as_os_str(),
        ],
    )
    .unwrap();
    // Group 1's descriptor checksum (bg_checksum at 0x1E; descriptors in
    // block 2 of a 1 KiB-block filesystem, 64 bytes each with 64bit).
    let out = run_ok("dumpe2fs", ["-h".as_ref(), path.as_os_str()]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let desc_size: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Group descriptor size:"))
        .map_or(32, |v| v.trim().parse().unwrap());
    let at = 2 * 1024 + desc_size + 0x1E;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let block: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MMP block number:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let img = MmpImage {
        path,
        block,
        block_size: 1024,
    };
    assert_eq!(img.read().seq, SEQ_CLEAN);

    let a = LoopDevice::attach(&img.path, false).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    mount_ok(&broker, a.path(), &mnt, "rw");
    let entry = broker.entry_for(&mnt).unwrap().unwrap();
    assert_eq!(entry.read_only, Some(true), "served read-only: {entry:?}");
    let e = fs::write(mnt.join("x"), b"x").expect_err("a write to a read-only mount");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let held = img.read();
    assert!(
        held.seq != SEQ_CLEAN && held.device == a.name(),
        "the read-write open claimed the block: {held:?}"
    );
    unmount_ok(&broker, &mnt);
    assert_eq!(
        img.read().seq,
        SEQ_CLEAN,
        "the unmount of a mount served read-only left the MMP block in use: {:?}\n{}",
        img.read(),
        broker.log_tail(20)
    );
}

/// d, errors=panic: the fence aborts the mount (the worker exits, the
/// broker cleans up) and still writes nothing more.
#[test]
fn foreign_write_with_errors_panic_aborts_the_mount() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-panic").unwrap();
    let img = MmpImage::make(&tmp, "panic.img");
    let a = LoopDevice::attach(&img.path, false).unwrap();
    let b = LoopDevice::attach(&img.path, false).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    mount_ok(&broker, a.path(), &mnt, "rw,errors=panic");
    write_synced(&mnt.join("before"), b"before the fence\n").unwrap();
    let pid = broker.worker_pid(&mnt).unwrap();
    let intruder = Mmp {
        seq: 0x0bad_cafe,
        node: "other-host".into(),
        device: "sdy".into(),
    };
    let mut gone = false;
    for _ in 0..3 {
        img.forge(
            b.path(),
            intruder.seq,
            &intruder.node,
            &intruder.device,
            &tmp.join("forged"),
        );
        gone = wait_until(Duration::from_secs(15), || {
            !procfs::pid_alive(pid) || img.read() != intruder
        }) && !procfs::pid_alive(pid);
        if gone {
            break;
        }
    }
    assert!(
        gone,
        "errors=panic: the worker still runs after the fence; block {:?}\n{}",
        img.read(),
        broker.log_tail(30)
    );
    assert!(
        wait_until(SETTLE, || !procfs::is_mounted(&mnt)
            && broker.entry_for(&mnt).unwrap().is_none()),
        "the broker did not clean up after the aborted mount\n{}",
        broker.log_tail(30)
    );
    let log = broker.log();
    assert!(
        log.contains("errors=panic") && log.contains("other-host"),
        "the log says why: {}",
        broker.log_tail(30)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(img.read(), intruder, "the aborted mount wrote the block");
}

/// b/d together: a worker that stops (SIGSTOP: a hung host) stops
/// updating the block; the kernel on the other device then takes the
/// filesystem over; when the worker runs again its update thread finds
/// the kernel's writes and fences the mount before it writes anything.
#[test]
fn stalled_worker_is_fenced_when_the_kernel_takes_over() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("mmp-stalled").unwrap();
    let img = MmpImage::make(&tmp, "stalled.img");
    let a = LoopDevice::attach(&img.path, false).unwrap();
    let b = LoopDevice::attach(&img.path, false).unwrap();
    let broker = Broker::start().unwrap();
    let (mnt_a, mnt_k) = (tmp.join("a"), tmp.join("kernel"));
    mount_ok(&broker, a.path(), &mnt_a, "rw");
    let data = pattern(21, 200_003);
    write_synced(&mnt_a.join("before"), &data).unwrap();
    let pid = broker.worker_pid(&mnt_a).unwrap();

    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    // Resumed whatever happens below.
    struct Cont(i32);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
        }
    }
    let cont = Cont(pid);
    let kernel = KernelRw::try_mount(b.path(), &mnt_k)
        .unwrap_or_else(|e| panic!("the kernel could not take over from a stopped worker: {e}"));
    let taken = img.read();
    assert_eq!(taken.device, b.name(), "the kernel's claim: {taken:?}");
    fs::write(mnt_k.join("kernel"), b"the kernel took over\n").unwrap();
    drop(cont);

    let mut entry = None;
    let fenced = wait_until(Duration::from_secs(15), || {
        entry = broker.entry_for(&mnt_a).unwrap();
        entry.as_ref().is_some_and(|e| e.error.is_some())
    });
    assert!(
        fenced,
        "the resumed worker did not fence its mount: {entry:?}\n{}",
        broker.log_tail(30)
    );
    let error = entry.unwrap().error.unwrap();
    assert!(
        error.contains("multi-mount protection") && error.contains(&b.name()),
        "{error}"
    );
    let e = fs::write(mnt_a.join("after"), b"x").expect_err("a write after the fence");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert!(fs::read(mnt_a.join("before")).unwrap() == data);
    unmount_ok(&broker, &mnt_a);
    let now = img.read();
    assert!(
        now.device == b.name() && now.seq != SEQ_CLEAN,
        "the kernel still holds the block after safemount's unmount: {now:?}"
    );
    assert_eq!(
        fs::read(mnt_k.join("before")).unwrap(),
        data,
        "the kernel sees what safemount had fsync'd"
    );
    kernel.unmount();
    assert_eq!(img.read().seq, SEQ_CLEAN);
    fsck_clean(&img.path).unwrap();
    eprintln!("mmp stalled: list says: {error}");
}

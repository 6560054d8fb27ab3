//! A disk pulled out without unmounting, through broker and worker.
//!
//! The kernel's ext4 writes and syncs files; the image is copied while the
//! kernel still has it mounted, so the copy has needs_recovery set and its
//! last transactions only in the journal (what a USB stick pulled from a
//! desktop looks like). Then:
//! - `-o ro` replays in memory: the tree is exactly what the kernel shows
//!   after replaying a copy itself, and the image's bytes are unchanged;
//! - `-o ro,noload` shows the unrecovered state, exactly what the kernel
//!   shows with `ro,noload`, and writes nothing;
//! - `-o rw` replays in place: the same tree, and afterwards e2fsck finds
//!   nothing to fix and needs_recovery is gone.
//!
//! Under each journal format the kernel writes: checksums v3 (default),
//! none (ext3), a small journal, file data in the log (data=journal, with
//! an escaped block) and asynchronous commits.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::path::{Path, PathBuf};

use safemount_tests::broker::Broker;
use safemount_tests::image::fsck_clean;
use safemount_tests::kernel::KernelMount;
use safemount_tests::procfs;
use safemount_tests::snapshot::{self, Against, Snapshot, WalkOpts, assert_same};
use safemount_tests::util::{Rng, TempDir, require_root, run_ok, sha256_file};

/// Whether dumpe2fs lists needs_recovery among the image's features.
fn needs_recovery(img: &Path) -> bool {
    let out = run_ok("dumpe2fs", ["-h".as_ref(), img.as_os_str()]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("Filesystem features:") && l.contains("needs_recovery"))
}

/// The jbd2 magic number, as the first bytes of a file's block: the log
/// must escape such a block (data=journal logs file data).
const JBD2_MAGIC: [u8; 4] = [0xc0, 0x3b, 0x39, 0x98];
/// What follows the magic in each such block of the file "magic".
const AFTER_MAGIC: &[u8] = b"looks like a log block";

/// mkfs with `mkfs_args`; files written by the kernel (mounted with
/// `kernel_opts`) and synced (in place); then more written, renamed and
/// deleted, committed to the journal (commit=1) but not yet written in
/// place; the image copied while still mounted.
fn pulled_image(tmp: &TempDir, name: &str, mkfs_args: &[&str], kernel_opts: &str) -> PathBuf {
    let img = tmp.join(format!("{name}.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut args = vec!["-q", "-F"];
    args.extend_from_slice(mkfs_args);
    args.push(img.to_str().unwrap());
    run_ok("mkfs.ext4", &args).unwrap();
    let kmnt = tmp.join(format!("{name}-writer"));
    std::fs::create_dir(&kmnt).unwrap();
    let opts = format!("commit=1,{kernel_opts}");
    let kernel = KernelMount::mount_rw(&img, &kmnt, opts.trim_end_matches(',')).unwrap();
    let mut rng = Rng::new(0x5afe_0001);
    for d in 0..4 {
        let dir = kmnt.join(format!("dir{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..40 {
            let len = (rng.next_u64() % 40_000) as usize;
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            std::fs::write(dir.join(format!("f{f}")), &data).unwrap();
        }
    }
    run_ok("sync", ["-f".as_ref(), kmnt.as_os_str()]).unwrap();
    // Deletes and renames leave revoke records and rewritten blocks.
    for f in (0..40).step_by(3) {
        std::fs::remove_file(kmnt.join(format!("dir1/f{f}"))).unwrap();
    }
    std::fs::rename(kmnt.join("dir2"), kmnt.join("dir0/moved")).unwrap();
    std::fs::write(kmnt.join("last"), b"written just before the pull").unwrap();
    let magic = [&JBD2_MAGIC[..], AFTER_MAGIC].concat();
    std::fs::write(kmnt.join("magic"), magic.repeat(500)).unwrap();
    // Two commit intervals: in the journal, not yet checkpointed (dirty
    // metadata is written in place after 30 s).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let pulled = tmp.join(format!("{name}-pulled.img"));
    run_ok(
        "cp",
        [
            "--sparse=always".as_ref(),
            img.as_os_str(),
            pulled.as_os_str(),
        ],
    )
    .unwrap();
    kernel.unmount().unwrap();
    assert!(
        needs_recovery(&pulled),
        "[{name}] harness: the copy taken while mounted does not need recovery"
    );
    if kernel_opts.contains("data=journal") {
        // The log's copy of the block has its first 4 bytes zeroed.
        let escaped = [&[0u8; 4][..], AFTER_MAGIC].concat();
        let bytes = std::fs::read(&pulled).unwrap();
        assert!(
            bytes.windows(escaped.len()).any(|w| w == escaped),
            "[{name}] harness: no escaped block in the log"
        );
    }
    pulled
}

fn copy(tmp: &TempDir, img: &Path, name: &str) -> PathBuf {
    let to = tmp.join(name);
    run_ok(
        "cp",
        ["--sparse=always".as_ref(), img.as_os_str(), to.as_os_str()],
    )
    .unwrap();
    to
}

/// The kernel's view of `img` mounted with `opts` ("rw": it replays a
/// copy; "ro": `ro,noload` on a read-only loop device).
fn kernel_view(tmp: &TempDir, img: &Path, tag: &str, replay: bool) -> Snapshot {
    let kmnt = tmp.join(format!("kernel-{tag}"));
    std::fs::create_dir(&kmnt).unwrap();
    let k = if replay {
        KernelMount::mount_rw(img, &kmnt, "").unwrap()
    } else {
        KernelMount::mount(img, &kmnt).unwrap()
    };
    let snap = snapshot::snapshot(&kmnt, &WalkOpts::default());
    k.unmount().unwrap();
    snap
}

/// safemount's view of `img` with `-o opts`.
fn safemount_view(broker: &Broker, tmp: &TempDir, img: &Path, tag: &str, opts: &str) -> Snapshot {
    let mnt = tmp.join(format!("safemount-{tag}"));
    std::fs::create_dir(&mnt).unwrap();
    if let Err(e) = broker.mount(img, &mnt, opts) {
        panic!(
            "[{tag}] mount -o {opts} failed: {e}\n{}",
            broker.log_tail(20)
        );
    }
    assert!(procfs::is_mounted(&mnt), "[{tag}] not in the mount table");
    let snap = snapshot::snapshot(&mnt, &WalkOpts::default());
    broker.unmount(&mnt).unwrap();
    assert!(!procfs::is_mounted(&mnt), "[{tag}] still mounted");
    snap
}

fn run_config(name: &str, mkfs_args: &[&str], kernel_opts: &str) {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new(&format!("recovery-{name}")).unwrap();
    let pulled = pulled_image(&tmp, name, mkfs_args, kernel_opts);
    let broker = Broker::start().unwrap();

    // The oracles, each on a copy.
    let replayed = kernel_view(&tmp, &copy(&tmp, &pulled, "k-replay.img"), "replay", true);
    let unrecovered = kernel_view(&tmp, &copy(&tmp, &pulled, "k-noload.img"), "noload", false);
    assert!(
        replayed.entries.keys().any(|k| k.contains("last")),
        "[{name}] harness: the kernel's replay lacks the last file"
    );
    // Else replaying would change nothing and prove nothing.
    assert!(
        !snapshot::diff(&replayed, &unrecovered, Against::Kernel).is_empty(),
        "[{name}] harness: the journal holds nothing the replay would show"
    );

    let sha = sha256_file(&pulled).unwrap();
    let ro = safemount_view(&broker, &tmp, &pulled, &format!("{name}-ro"), "ro");
    assert_same(
        &replayed,
        &ro,
        Against::Kernel,
        &format!("[{name}] -o ro vs the kernel's replay"),
    );
    assert_eq!(
        sha,
        sha256_file(&pulled).unwrap(),
        "[{name}] -o ro wrote the image"
    );
    assert!(
        needs_recovery(&pulled),
        "[{name}] -o ro cleared needs_recovery"
    );

    let noload = safemount_view(
        &broker,
        &tmp,
        &pulled,
        &format!("{name}-noload"),
        "ro,noload",
    );
    assert_same(
        &unrecovered,
        &noload,
        Against::Kernel,
        &format!("[{name}] -o ro,noload vs the kernel's ro,noload"),
    );
    assert_eq!(
        sha,
        sha256_file(&pulled).unwrap(),
        "[{name}] -o ro,noload wrote the image"
    );

    let rw_img = copy(&tmp, &pulled, "rw.img");
    let rw = safemount_view(&broker, &tmp, &rw_img, &format!("{name}-rw"), "rw,noatime");
    assert_same(
        &replayed,
        &rw,
        Against::Kernel,
        &format!("[{name}] -o rw vs the kernel's replay"),
    );
    assert!(
        !needs_recovery(&rw_img),
        "[{name}] -o rw left needs_recovery set"
    );
    fsck_clean(&rw_img).unwrap();
    eprintln!(
        "[{name}] pulled disk: {} entries replayed as the kernel does (ro in memory, rw in place), noload as the kernel shows it",
        ro.entries.len()
    );
}

#[test]
fn pulled_disk_defaults() {
    run_config("defaults", &[], "");
}

#[test]
fn pulled_disk_ext3() {
    run_config("ext3", &["-t", "ext3"], "");
}

#[test]
fn pulled_disk_1k_small_journal() {
    run_config("small-journal", &["-b", "1024", "-J", "size=1"], "");
}

/// File data in the log, one block of it escaped (it starts with the jbd2
/// magic).
#[test]
fn pulled_disk_data_journal() {
    run_config("data-journal", &[], "data=journal");
}

/// Asynchronous commits: checksum v1 commit blocks, no metadata_csum.
#[test]
fn pulled_disk_async_commit() {
    run_config(
        "async-commit",
        &["-O", "^metadata_csum"],
        "journal_async_commit,data=writeback",
    );
}

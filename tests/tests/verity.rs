//! fs-verity files through broker, worker and a real FUSE mount. This
//! kernel has no CONFIG_FS_VERITY, so the oracles are fsverity-utils and
//! e2fsck: images are built to ext4's on-disk format from `fsverity
//! digest`'s Merkle tree and descriptor (tests/verity/put-verity-file.sh,
//! checked clean by `e2fsck -fn`, which knows verity files), then on a
//! read-write mount every file must read back equal to its original,
//! `fsverity measure` must print what `fsverity digest` printed for the
//! original, a corrupted block must read EIO while the rest of its file
//! reads fine, opening for writing and truncating must fail with EPERM
//! while metadata changes work, and after writes to other files the image
//! must stay clean for e2fsck.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image::{debugfs, fsck_clean};
use safemount_tests::ops;
use safemount_tests::skip::skip;
use safemount_tests::util::{TempDir, pattern, require_root, run_ok};

const MIB: u64 = 1 << 20;

/// One verity file: name, content, `fsverity digest` options.
struct Spec {
    name: &'static str,
    data: Vec<u8>,
    opts: Vec<String>,
}

fn spec(name: &'static str, data: Vec<u8>, opts: &[&str]) -> Spec {
    Spec {
        name,
        data,
        opts: opts.iter().map(|s| s.to_string()).collect(),
    }
}

/// Puts `data` into `img` as verity file `name`; the digest `fsverity
/// digest` printed for it.
fn put_verity_file(img: &Path, dir: &Path, s: &Spec) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("verity/put-verity-file.sh");
    let data = dir.join(format!("{}.data", s.name));
    fs::write(&data, &s.data).unwrap();
    let mut args = vec![
        img.as_os_str().to_owned(),
        s.name.into(),
        data.as_os_str().to_owned(),
    ];
    args.extend(s.opts.iter().map(Into::into));
    let out = run_ok(script.to_str().unwrap(), &args).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn have_tools() -> bool {
    let ok = ["fsverity", "debugfs", "lsattr"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        skip("needs fsverity (fsverity-utils), debugfs and lsattr: scripts/install-deps.sh");
    }
    ok
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// The files each filesystem gets, for fs block size `bs`. Merkle tree
/// blocks are at most the filesystem's block (as the kernel requires), so
/// files that do not choose theirs get `bs`.
fn specs(bs: usize) -> Vec<Spec> {
    let mut all = vec![
        spec("empty", vec![], &[]),
        spec("one_byte", vec![0xa5], &[]),
        spec("one_block", pattern(1, bs), &[]),
        spec(
            "many_sha512_salt",
            pattern(2, 3 * MIB as usize + 7),
            &["--hash-alg=sha512", "--salt=5afe3017"],
        ),
        // 1 KiB Merkle blocks with SHA-512: 16 hashes a block, so 1 MiB
        // (1024 blocks) needs three levels above the data.
        spec(
            "three_levels",
            pattern(3, MIB as usize),
            &["--hash-alg=sha512", "--block-size=1024"],
        ),
        spec("victim", pattern(4, 64 * 4096), &["--salt=00"]),
    ];
    for s in &mut all {
        if !s.opts.iter().any(|o| o.starts_with("--block-size")) {
            s.opts.push(format!("--block-size={}", bs.min(4096)));
        }
    }
    all
}

/// Corrupts one byte of logical block `lblk` of `name` in the image.
fn corrupt(img: &Path, bs: u64, name: &str, lblk: u64) {
    let pblk: u64 = debugfs(img, &format!("bmap {name} {lblk}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let f = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, pblk * bs + 100).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], pblk * bs + 100).unwrap();
}

fn check_fs(bs: u64) {
    let tmp = TempDir::new(&format!("verity-{bs}")).unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &["-b", &bs.to_string(), "-O", "verity"], 64 * MIB).unwrap();
    let specs = specs(bs as usize);
    let digests: Vec<String> = specs
        .iter()
        .map(|s| put_verity_file(&img, tmp.path(), s))
        .collect();
    fsck_clean(&img).unwrap();
    // One data block of the victim, at byte 20480 (in its 4 KiB block 5),
    // goes bad; the tree does not change.
    let bad_lblk = 5 * 4096 / bs;
    corrupt(&img, bs, "victim", bad_lblk);

    let mnt = tmp.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img, &mnt, "rw").unwrap();

    for (s, digest) in specs.iter().zip(&digests) {
        let p = mnt.join(s.name);
        let out = Command::new("fsverity")
            .arg("measure")
            .arg(&p)
            .output()
            .unwrap();
        let measured = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            measured.split_whitespace().next(),
            Some(digest.as_str()),
            "{bs}: fsverity measure {}: {measured}{}",
            s.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let lsattr = Command::new("lsattr").arg(&p).output().unwrap();
        let flags = String::from_utf8_lossy(&lsattr.stdout);
        assert!(
            flags
                .split_whitespace()
                .next()
                .is_some_and(|f| f.contains('V')),
            "{bs}: lsattr {}: {flags}",
            s.name
        );
        if s.name == "victim" {
            continue;
        }
        let got = fs::read(&p).unwrap_or_else(|e| panic!("{bs}: read {}: {e}", s.name));
        assert!(got == s.data, "{bs}: {} reads back different", s.name);
    }

    // The corrupted block fails, with EIO, alone.
    let victim = &specs.last().unwrap().data;
    let p = mnt.join("victim");
    assert_eq!(errno(fs::read(&p)), Some(libc::EIO), "{bs}: whole read");
    let f = File::open(&p).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(errno(f.read_exact_at(&mut buf, 5 * 4096)), Some(libc::EIO));
    for blk in [0u64, 4, 6, 63] {
        f.read_exact_at(&mut buf, blk * 4096)
            .unwrap_or_else(|e| panic!("{bs}: victim block {blk}: {e}"));
        let at = (blk * 4096) as usize;
        assert!(buf[..] == victim[at..at + 4096], "{bs}: victim block {blk}");
    }
    drop(f);

    // What FUSE cannot carry (FS_IOC_READ_VERITY_METADATA: its buffer is a
    // pointer) and what is not implemented (FS_IOC_ENABLE_VERITY) answer
    // EOPNOTSUPP.
    fs::write(mnt.join("to_enable"), b"data").unwrap();
    for args in [
        vec!["dump_metadata", "descriptor", "one_block"],
        vec!["enable", "to_enable"],
    ] {
        let out = Command::new("fsverity")
            .args(&args)
            .current_dir(&mnt)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Operation not supported"),
            "{bs}: fsverity {args:?}: {err}"
        );
    }

    // Content is read-only; metadata is not.
    let v = mnt.join("many_sha512_salt");
    assert_eq!(
        errno(OpenOptions::new().write(true).open(&v)),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(OpenOptions::new().append(true).open(&v)),
        Some(libc::EPERM)
    );
    assert_eq!(
        nix::unistd::truncate(&v, 0).err().map(|e| e as i32),
        Some(libc::EPERM)
    );
    fs::set_permissions(&v, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(&v).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::rename(&v, mnt.join("renamed")).unwrap();
    fs::remove_file(mnt.join("one_byte")).unwrap();
    // The filesystem is read-write: other files take writes.
    let other = pattern(9, 2 * MIB as usize + 3);
    fs::write(mnt.join("new"), &other).unwrap();
    fs::write(mnt.join("plain"), b"plain\n").unwrap();
    assert!(fs::read(mnt.join("renamed")).unwrap() == specs[3].data);
    broker.unmount(&mnt).unwrap();
    fsck_clean(&img).unwrap();
    // The EIO reads were fs-verity's, not filesystem errors: nothing was
    // recorded in the superblock (as in the kernel).
    let sb = debugfs(&img, "stats").unwrap();
    let state = sb.lines().find(|l| l.starts_with("Filesystem state:"));
    assert_eq!(
        state.map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" ")),
        Some("clean".to_owned()),
        "{bs}: {sb}"
    );
    assert!(!sb.contains("FS Error count"), "{bs}: {sb}");
}

#[test]
fn verity_files_read_verified_and_stay_immutable() {
    if !require_root() || !have_tools() {
        return;
    }
    if kernel_standin() {
        // The kernel here has no fs-verity: nothing to compare with.
        skip("verity needs safemount (this kernel has no CONFIG_FS_VERITY)");
        return;
    }
    check_fs(4096);
    check_fs(1024);
}

//! Encrypted directories without their key, against the kernel. A kernel
//! mount with a key makes encrypted directories (short, long and Unicode
//! names, an htree directory, one-block and nested directories, fast and
//! slow symlinks, an empty directory, two name paddings); once it is gone
//! no one has the key, as on a disk from another machine. Twin copies of
//! that image are then mounted read-write by safemount and by the kernel
//! (still without the key), and the same steps run on both: every
//! directory listed (no-key names, each entry's type, size, links and
//! mode, symlink targets), files opened, names created, linked, renamed,
//! truncated, chmod'ed, looked up by made-up names, unlinked and removed,
//! by the names the listing gave. Every outcome, errno included, must be
//! the same. Afterwards both images are clean for e2fsck and the kernel
//! lists the same tree on both.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::fscrypt;
use safemount_tests::image::fsck_clean;
use safemount_tests::kernel::KernelMount;
use safemount_tests::ops;
use safemount_tests::util::{TempDir, errno_name, io_errno, require_root};

const MIB: u64 = 1 << 20;

/// A step's outcome: "ok" or the errno's name.
fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(io_errno(&e)),
    }
}

/// The encrypted tree, made through a kernel mount that has the key.
fn populate(mnt: &Path) {
    let id = fscrypt::add_key(mnt, &[0x5a; 64]).unwrap();
    for (dir, pad) in [("enc", fscrypt::PAD_32), ("enc4", fscrypt::PAD_4)] {
        let d = mnt.join(dir);
        fs::create_dir(&d).unwrap();
        fscrypt::set_policy(&d, &id, pad).unwrap();
        // Sizes tell the files apart once their names are unreadable.
        fs::write(d.join("hello.txt"), b"hello world").unwrap();
        fs::write(d.join("caf\u{e9}-\u{65e5}\u{672c}"), vec![7u8; 5000]).unwrap();
        fs::write(d.join("x".repeat(100)), b"12").unwrap();
        fs::write(d.join("y".repeat(200)), b"123").unwrap();
        fs::write(d.join("z".repeat(255)), b"1234").unwrap();
        symlink("t", d.join("fast-link")).unwrap();
        symlink("target/".repeat(30), d.join("slow-link")).unwrap();
        fs::hard_link(d.join("hello.txt"), d.join("hello-again")).unwrap();
        fs::create_dir(d.join("empty")).unwrap();
        fs::create_dir_all(d.join("sub/deeper")).unwrap();
        fs::write(d.join("sub/inner"), b"inner").unwrap();
        fs::write(d.join("sub/deeper/leaf"), b"leaf!!").unwrap();
    }
    // Enough names for an htree, some abbreviated.
    let big = mnt.join("enc/big");
    fs::create_dir(&big).unwrap();
    for i in 0..400 {
        let name = match i % 4 {
            0 => format!("f{i}"),
            1 => format!("file-number-{i:05}"),
            2 => format!("{i}-{}", "long".repeat(45)),
            _ => format!("\u{3b1}\u{3b2}-{i}"),
        };
        fs::write(big.join(name), vec![0u8; i]).unwrap();
    }
    let plain = mnt.join("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("f"), b"plain").unwrap();
}

/// Names in `dir`, sorted (the order of a listing is not compared).
fn names(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    v.sort();
    Ok(v)
}

/// One line per entry under `dir`, recursively: name, type, size, links,
/// mode, and a symlink's target or a file's open outcome.
fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let entries = match names(dir) {
        Ok(v) => v,
        Err(e) => {
            out.push(format!(
                "list {}: {}",
                rel(dir, root),
                outcome::<()>(Err(e))
            ));
            return;
        }
    };
    for p in entries {
        let m = fs::symlink_metadata(&p).unwrap();
        let what = if m.file_type().is_symlink() {
            match fs::read_link(&p) {
                Ok(t) => format!("-> {}", t.display()),
                Err(e) => outcome::<()>(Err(e)),
            }
        } else if m.is_file() {
            format!("open {}", outcome(fs::File::open(&p)))
        } else {
            String::new()
        };
        out.push(format!(
            "{} {:o} size {} links {} {what}",
            rel(&p, root),
            m.mode(),
            m.size(),
            m.nlink()
        ));
        if m.is_dir() {
            walk(&p, root, out);
        }
    }
}

fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// The first entry of `dir` whose metadata `pick` accepts.
fn find(dir: &Path, pick: impl Fn(&fs::Metadata) -> bool) -> PathBuf {
    names(dir)
        .unwrap()
        .into_iter()
        .find(|p| pick(&fs::symlink_metadata(p).unwrap()))
        .unwrap_or_else(|| panic!("nothing picked in {}", dir.display()))
}

fn truncate(p: &Path, len: i64) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; truncate reads nothing else.
    if unsafe { libc::truncate(c.as_ptr(), len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The steps, run on a mount without the key; every outcome in order.
fn steps(root: &Path) -> Vec<String> {
    let mut log = Vec::new();
    walk(root, root, &mut log);
    let enc = root.join("enc");
    let hello = find(&enc, |m| m.is_file() && m.size() == 11);
    let long = find(&enc, |m| m.is_file() && m.size() == 3);
    let sub = find(&enc, |m| m.is_dir() && m.nlink() == 3);
    let empty = find(&enc, |m| m.is_dir() && m.nlink() == 2 && m.size() <= 4096);
    let big = find(&enc, |m| m.is_dir() && m.size() > 8192);
    let mut step = |what: &str, r: String| log.push(format!("{what}: {r}"));
    step("create", outcome(fs::File::create(enc.join("new"))));
    step("mkdir", outcome(fs::create_dir(enc.join("newdir"))));
    step("symlink", outcome(symlink("x", enc.join("newlink"))));
    step(
        "link into",
        outcome(fs::hard_link(root.join("plain/f"), enc.join("l"))),
    );
    step(
        "link within",
        outcome(fs::hard_link(
            &hello,
            enc.join("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        )),
    );
    step(
        "rename within",
        outcome(fs::rename(&hello, enc.join("renamed"))),
    );
    step(
        "rename out",
        outcome(fs::rename(&hello, root.join("plain/out"))),
    );
    step(
        "rename in",
        outcome(fs::rename(root.join("plain/f"), enc.join("in"))),
    );
    step(
        "rename encrypted dir",
        outcome(fs::rename(root.join("enc4"), root.join("plain/enc4"))),
    );
    step("truncate", outcome(truncate(&long, 1)));
    step(
        "open for writing",
        outcome(fs::OpenOptions::new().append(true).open(&long)),
    );
    step(
        "chmod",
        outcome(fs::set_permissions(
            &long,
            fs::Permissions::from_mode(0o600),
        )),
    );
    step(
        "stat bogus",
        outcome(fs::symlink_metadata(enc.join("bogus"))),
    );
    step(
        "stat made-up no-key name",
        outcome(fs::symlink_metadata(enc.join("A".repeat(40)))),
    );
    let mut trailing = hello.clone().into_os_string();
    trailing.push("A");
    step("stat name + 'A'", outcome(fs::symlink_metadata(&trailing)));
    step("rmdir non-empty", outcome(fs::remove_dir(&sub)));
    step("rmdir empty", outcome(fs::remove_dir(&empty)));
    step("unlink short", outcome(fs::remove_file(&hello)));
    step("unlink long", outcome(fs::remove_file(&long)));
    for (i, p) in names(&big).unwrap().into_iter().enumerate() {
        if i % 7 == 0 {
            let r = outcome(fs::remove_file(&p));
            step(&format!("unlink big #{i}"), r);
        }
    }
    let mut after = Vec::new();
    walk(root, root, &mut after);
    log.push(format!("after: {} entries", after.len()));
    log.extend(after);
    log
}

fn run(config: &str, mkfs: &[&str]) {
    let tmp = TempDir::new(&format!("encrypted-{config}")).unwrap();
    let orig = tmp.join("orig.img");
    ops::make_empty_image(&orig, mkfs, 64 * MIB).unwrap();
    let mnt = tmp.join("mnt");
    fs::create_dir(&mnt).unwrap();
    {
        let k = KernelMount::mount_rw(&orig, &mnt, "").unwrap();
        populate(&mnt);
        k.unmount().unwrap();
    }
    fsck_clean(&orig).unwrap();
    let img_s = tmp.join("safemount.img");
    let img_k = tmp.join("kernel.img");
    fs::copy(&orig, &img_s).unwrap();
    fs::copy(&orig, &img_k).unwrap();

    let broker = Broker::start().unwrap();
    broker
        .mount(&img_s, &mnt, "rw")
        .unwrap_or_else(|e| panic!("mount: {e}\n{}", broker.log_tail(20)));
    let ours = steps(&mnt);
    broker.unmount(&mnt).unwrap();
    let k = KernelMount::mount_rw(&img_k, &mnt, "").unwrap();
    let theirs = steps(&mnt);
    k.unmount().unwrap();

    let diffs: Vec<String> = ours
        .iter()
        .zip(&theirs)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("safemount {a}\n   kernel {b}"))
        .collect();
    assert!(
        diffs.is_empty() && ours.len() == theirs.len(),
        "{config}: {} of {} steps differ ({} vs {} lines):\n{}",
        diffs.len(),
        theirs.len(),
        ours.len(),
        theirs.len(),
        diffs.join("\n")
    );
    // The no-key names really are encoded ciphertext, and long ones are
    // abbreviated as the kernel does (252 characters).
    assert!(ours.iter().any(|l| l.contains("open ENOKEY")), "{ours:#?}");
    assert!(
        ours.iter().any(|l| l.split(' ').next().is_some_and(|n| n
            .rsplit('/')
            .next()
            .unwrap()
            .len()
            == 252)),
        "no abbreviated no-key name listed"
    );

    fsck_clean(&img_s).unwrap();
    fsck_clean(&img_k).unwrap();
    // What safemount left is what the kernel left.
    let list = |img: &Path| {
        let k = KernelMount::mount(img, &mnt).unwrap();
        let mut v = Vec::new();
        walk(&mnt, &mnt, &mut v);
        k.unmount().unwrap();
        v
    };
    assert_eq!(list(&img_s), list(&img_k), "{config}: trees differ on disk");
}

#[test]
fn encrypted_directories_without_the_key_match_the_kernel() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in is the oracle itself");
        return;
    }
    run("4k", &["-O", "encrypt", "-b", "4096"]);
    // No dir_index: every listing is linear (no dirhash in no-key names);
    // 1 KiB blocks put the slow symlink's target in a data block of its own.
    run("1k-linear", &["-O", "encrypt,^dir_index", "-b", "1024"]);
}

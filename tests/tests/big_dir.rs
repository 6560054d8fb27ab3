//! One directory with 50,000 entries, indexed as an htree: readdir through
//! safemount lists each name exactly once and every name can be looked up.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::collections::BTreeSet;
use std::ffi::OsString;

use safemount_tests::broker::Broker;
use safemount_tests::image;
use safemount_tests::snapshot::{self, Against, WalkOpts, assert_same};
use safemount_tests::tree::{self, MIB, TreeSpec};
use safemount_tests::util::{TempDir, io_errno, require_root, sha256_file};

const ENTRIES: usize = 50_000;

#[test]
fn big_htree_directory() {
    if !require_root() {
        return;
    }
    let t0 = std::time::Instant::now();
    let tmp = TempDir::new("bigdir").unwrap();
    let src = tmp.join("src");
    let spec = TreeSpec {
        big_dir: ENTRIES,
        depth: 0,
        everything: false,
        max_file_size: 0,
        ..TreeSpec::standard()
    };
    tree::generate(&src, &spec).unwrap();
    let img = tmp.join("fs.img");
    let cfg = image::config("defaults").unwrap();
    image::make_image_via_kernel(&src, &img, cfg, 1024 * MIB, &tmp.join("build")).unwrap();
    // The harness must really have built an htree (EXT4_INDEX_FL 0x1000).
    let st = image::debugfs(&img, "stat /bigdir").unwrap();
    let flags = st
        .lines()
        .find_map(|l| l.split("Flags: ").nth(1))
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .expect("debugfs stat shows Flags");
    assert!(
        flags & 0x1000 != 0,
        "bigdir is not indexed (flags {flags:#x}); the kernel did not build an htree"
    );
    let sha_before = sha256_file(&img).unwrap();
    let built = t0.elapsed();

    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    if let Err(e) = broker.mount(&img, &mnt, "ro") {
        panic!(
            "safemount mount failed: {e}\nbroker log:\n{}",
            broker.log_tail(20)
        );
    }

    // readdir: every name exactly once.
    let want: BTreeSet<OsString> = std::fs::read_dir(src.join("bigdir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(want.len(), ENTRIES);
    let listed: Vec<OsString> = std::fs::read_dir(mnt.join("bigdir"))
        .unwrap()
        .map(|e| e.expect("readdir entry").file_name())
        .collect();
    let set: BTreeSet<OsString> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        set.len(),
        "readdir returned {} names but only {} distinct",
        listed.len(),
        set.len()
    );
    let missing: Vec<&OsString> = want.difference(&set).take(5).collect();
    let extra: Vec<&OsString> = set.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "readdir of bigdir: missing {missing:?}, unexpected {extra:?}"
    );

    // Lookup of every name (stat), and of names that are not there.
    let mut failed = Vec::new();
    for n in &want {
        if let Err(e) = std::fs::symlink_metadata(mnt.join("bigdir").join(n)) {
            failed.push(format!("{n:?}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} names not stat-able, first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    for absent in [
        "entry-50000-",
        "entry-00000-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "zzz",
    ] {
        let e = std::fs::symlink_metadata(mnt.join("bigdir").join(absent))
            .expect_err("absent name must not exist");
        assert_eq!(io_errno(&e), libc::ENOENT, "lookup of absent {absent}: {e}");
    }

    // And the whole tree against the source.
    let source = snapshot::snapshot(
        &src,
        &WalkOpts {
            seek_map: false,
            ..WalkOpts::default()
        },
    );
    let seen = snapshot::snapshot(
        &mnt,
        &WalkOpts {
            seek_map: false,
            ..WalkOpts::default()
        },
    );
    assert_same(
        &source,
        &seen,
        Against::Source,
        "bigdir tree: safemount vs source",
    );

    broker
        .unmount(&mnt)
        .unwrap_or_else(|e| panic!("unmount: {e}"));
    assert_eq!(sha_before, sha256_file(&img).unwrap(), "image changed");
    println!(
        "big_dir ok: {ENTRIES} entries listed once and stat-able; image built in {:.1} s, total {:.1} s",
        built.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

//! Listings carry attributes: a stat walk of a directory (the whole
//! listing read first, then every entry lstat()ed, as find, du, ls -l and
//! file managers do) costs no LOOKUP, however many READDIRPLUS batches the
//! listing takes. Counted by the worker's own request counters, logged at
//! unmount.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image;
use safemount_tests::util::{TempDir, require_root};

/// Far more than one READDIRPLUS reply holds (a page or a few of entries
/// with their attributes).
const FILES: usize = 3000;

/// The worker's request count of kind `op` from the last "FUSE requests:"
/// line of `log`, once that line is there.
fn logged_count(broker: &Broker, op: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = broker.log();
        if let Some(line) = log.lines().rev().find(|l| l.contains("FUSE requests:")) {
            return line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{op}=")))
                .map_or(0, |n| n.parse().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "no request counts in the broker log:\n{}",
            broker.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stat_walk_of_a_large_directory_needs_no_lookups() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        eprintln!("skip: the kernel stand-in has no request counters");
        return;
    }
    let tmp = TempDir::new("listing").unwrap();
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..FILES {
        std::fs::write(
            src.join(format!("d/a-file-with-a-longish-name-{i:05}")),
            vec![7u8; i % 97],
        )
        .unwrap();
    }
    let img = tmp.join("fs.img");
    let cfg = image::config("defaults").unwrap();
    image::make_image(&src, &img, cfg, 64 << 20, &[], false).unwrap();

    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    if let Err(e) = broker.mount(&img, &mnt, "ro") {
        panic!("mount failed: {e}\nbroker log:\n{}", broker.log_tail(20));
    }
    let names: Vec<_> = std::fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), FILES);
    for n in &names {
        let got = std::fs::symlink_metadata(mnt.join("d").join(n)).unwrap();
        let want = std::fs::symlink_metadata(src.join("d").join(n)).unwrap();
        assert_eq!(got.size(), want.size(), "{n:?}");
    }
    broker.unmount(&mnt).unwrap();
    // The only name looked up is "d" itself.
    let lookups = logged_count(&broker, "lookup");
    assert!(
        lookups <= 1,
        "{lookups} LOOKUPs for a stat walk of {FILES} listed entries: the listing did not carry their attributes"
    );
    assert!(
        logged_count(&broker, "readdirplus") > 1,
        "one batch held the whole listing: the test proves nothing"
    );
}

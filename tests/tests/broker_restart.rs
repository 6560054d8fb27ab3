//! The broker is SIGKILLed while 32 clients mount, write, fsync and
//! unmount read-write images at once, then restarted. Afterwards every
//! mount is either adopted and serving or cleanly gone, no image is served
//! by two workers, and every byte fsync'd before, during or after the
//! crash is on its image, which e2fsck finds clean. The broker runs as
//! under systemd: its fd store keeps the live workers' channels only.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image::{self, fsck_clean};
use safemount_tests::ops;
use safemount_tests::procfs;
use safemount_tests::util::{Rng, TempDir, pattern, require_root, wait_until};

const CLIENTS: usize = 32;
const MIB: u64 = 1 << 20;

/// Files fsync'd on each image: name → seed (length follows from it).
type Synced = Vec<BTreeMap<String, u64>>;

fn len_of(seed: u64) -> usize {
    4096 + (seed as usize * 7919) % 200_000
}

/// One client's loop until `stop`: mount its image read-write, write and
/// fsync two files, unmount. Any step may fail while the broker is down;
/// then it tries to unmount and starts over.
fn client(b: &Broker, img: &Path, mnt: &Path, k: usize, stop: &AtomicBool, synced: &Mutex<Synced>) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let mounted = b.mount(img, mnt, "rw");
        if mounted.is_err() {
            let _ = b.unmount(mnt);
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        for j in 0..2 {
            let seed = (k as u64) << 32 | round << 4 | j;
            let name = format!("c{k}-r{round}-{j}");
            let ok = File::create(mnt.join(&name)).and_then(|mut f| {
                f.write_all(&pattern(seed, len_of(seed)))?;
                f.sync_all()
            });
            if ok.is_ok() {
                synced.lock().unwrap()[k].insert(name, seed);
            }
        }
        if stop.load(Ordering::Relaxed) {
            // The last mount stays: the checks find it listed and serving.
            return;
        }
        let _ = b.unmount(mnt);
    }
}

/// The broker's whole log, kept for a failure's post-mortem: a path to
/// name in the failure message.
fn keep_log(b: &Broker) -> String {
    let path = std::env::temp_dir().join("safemount-broker-restart-failure.log");
    match fs::write(&path, b.log()) {
        Ok(()) => format!("whole broker log: {}", path.display()),
        Err(e) => format!("cannot keep the broker log: {e}"),
    }
}

/// Worker processes that hold `img` open.
fn workers_holding(img: &Path) -> Vec<i32> {
    let want = fs::canonicalize(img).unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| procfs::cmdline(*pid).contains("safemount-worker"))
        .filter(|pid| {
            procfs::fds(*pid).is_ok_and(|fds| fds.iter().any(|(_, t)| Path::new(t) == want))
        })
        .collect()
}

#[test]
fn broker_killed_under_load_restarts_cleanly() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no broker to kill");
        return;
    }
    let tmp = TempDir::new("broker-restart").unwrap();
    let imgs: Vec<PathBuf> = (0..CLIENTS)
        .map(|k| tmp.join(format!("i{k}.img")))
        .collect();
    let mnts: Vec<PathBuf> = (0..CLIENTS).map(|k| tmp.join(format!("m{k}"))).collect();
    for (img, mnt) in imgs.iter().zip(&mnts) {
        ops::make_empty_image(img, &[], 32 * MIB).unwrap();
        fs::create_dir(mnt).unwrap();
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let kill_after = Duration::from_millis(800 + Rng::new(seed).next_u64() % 1500);
    eprintln!("broker_restart: SIGKILL after {kill_after:?} (seed {seed})");

    // Run as under systemd, whose fd store keeps the workers' log pipes
    // and health sockets for the next broker.
    let broker = Broker::start_managed().unwrap();
    let synced = Mutex::new(vec![BTreeMap::new(); CLIENTS]);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for k in 0..CLIENTS {
            let (img, mnt, b, st, sy) = (&imgs[k], &mnts[k], &broker, &stop, &synced);
            s.spawn(move || client(b, img, mnt, k, st, sy));
        }
        std::thread::sleep(kill_after);
        broker.kill_and_restart().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
    });
    let start = Instant::now();

    // Settled: no mount half made.
    let settled = wait_until(Duration::from_secs(20), || {
        broker.list().unwrap().iter().all(|e| e.state == "Mounted")
    });
    let list = broker.list().unwrap();
    assert!(
        settled,
        "mounts stuck mid-way: {list:?}\n{}",
        keep_log(&broker)
    );
    for (k, mnt) in mnts.iter().enumerate() {
        let listed = list
            .iter()
            .filter(|e| procfs::canonical(&e.mountpoint) == procfs::canonical(mnt))
            .count();
        if listed == 1 {
            // Adopted (or made after the restart) and serving.
            assert!(
                procfs::is_mounted(mnt),
                "m{k} listed but not mounted\n{}",
                keep_log(&broker)
            );
            fs::read_dir(mnt).unwrap_or_else(|e| panic!("m{k} listed but not serving: {e}"));
        } else {
            assert_eq!(listed, 0, "m{k} listed twice: {list:?}");
            assert!(
                !procfs::is_mounted(mnt),
                "m{k} mounted but unknown to the broker\n{}",
                keep_log(&broker)
            );
        }
        let holders = workers_holding(&imgs[k]);
        assert!(
            holders.len() <= listed,
            "i{k}.img held by workers {holders:?}, listed {listed} times"
        );
    }
    let restored = broker
        .log()
        .lines()
        .find(|l| l.contains("mounts left by a previous broker"))
        .map(|l| {
            l.rsplit("broker")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "none left".to_owned());
    let with_channels = broker
        .log()
        .matches("with its log and health channels")
        .count();
    eprintln!(
        "broker_restart: at the restart: {restored} ({with_channels} with their channels from the fd store); {} mounts live at the end, settled in {:?}",
        list.len(),
        start.elapsed()
    );
    assert!(
        !list.is_empty(),
        "no mount live at the end: the checks checked nothing\n{}",
        keep_log(&broker)
    );
    // The fd store holds a live mount's worker's pair (or nothing, for a
    // mount the broker was killed in the middle of recording), never a
    // gone worker's.
    let stored = broker.stored_fds().unwrap();
    for e in &list {
        let pid = e.worker_pid.unwrap();
        let pair = [format!("-{pid}-health"), format!("-{pid}-log")];
        let kept = stored
            .iter()
            .filter(|n| pair.iter().any(|p| n.ends_with(p.as_str())))
            .count();
        assert!(kept == 0 || kept == 2, "worker {pid}: {stored:?}");
    }
    // Every notification was taken (a service manager that stopped
    // reading would stall each mount's reply until the broker gives up).
    let refused = broker
        .log()
        .lines()
        .filter(|l| l.contains("cannot keep the worker's"))
        .count();
    assert_eq!(
        refused,
        0,
        "fd store notifications failed\n{}",
        keep_log(&broker)
    );
    let live = |n: &&String| {
        list.iter()
            .any(|e| n.contains(&format!("-{}-", e.worker_pid.unwrap())))
    };
    assert!(
        stored.iter().all(|n| live(&n)),
        "the fd store keeps channels of gone workers: {stored:?}\n{list:?}"
    );

    // Everything fsync'd is there; then each image is recovered and clean.
    for e in &list {
        broker
            .unmount(&e.mountpoint)
            .unwrap_or_else(|err| panic!("unmount {}: {err}", e.mountpoint.display()));
    }
    assert!(
        broker.wait_fd_store_empty(),
        "unmounted, yet the fd store keeps {:?}",
        broker.stored_fds()
    );
    let synced = synced.into_inner().unwrap();
    let total: usize = synced.iter().map(BTreeMap::len).sum();
    assert!(
        total >= CLIENTS,
        "the load made too little progress: {total} files fsync'd"
    );
    for (k, files) in synced.iter().enumerate() {
        broker
            .mount(&imgs[k], &mnts[k], "rw")
            .unwrap_or_else(|e| panic!("i{k}.img after the restart: {e}\n{}", keep_log(&broker)));
        for (name, seed) in files {
            let got = fs::read(mnts[k].join(name))
                .unwrap_or_else(|e| panic!("i{k}.img: {name}, fsync'd, lost: {e}"));
            assert!(
                got == pattern(*seed, len_of(*seed)),
                "i{k}.img: {name}: wrong bytes"
            );
        }
        broker.unmount(&mnts[k]).unwrap();
        if let Err(e) = fsck_clean(&imgs[k]) {
            panic!("i{k}.img not clean: {e:#}");
        }
    }
    eprintln!("broker_restart: {total} fsync'd files checked on {CLIENTS} images");
}

/// A worker adopted without its channels (a broker restarted outside
/// systemd: nothing reads the worker's log pipe any more) still logs,
/// unmounts and writes its filesystem clean. Its first log line after the
/// restart used to end it: tracing reported the failed write (EPIPE) with
/// eprintln!, which panics when stderr fails too, and the worker aborts on
/// a panic. At the latest that was its unmount's first line, before the
/// filesystem was written clean.
#[test]
fn a_worker_adopted_without_its_log_unmounts_clean() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no broker to kill");
        return;
    }
    let tmp = TempDir::new("adopted-no-log").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &[], 64 * MIB).unwrap();
    let mnt = tmp.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker
        .mount(&img, &mnt, "rw")
        .unwrap_or_else(|e| panic!("mount: {e}\n{}", broker.log_tail(20)));
    let pid = broker.worker_pid(&mnt).unwrap();
    fs::write(mnt.join("before"), pattern(1, 100_000)).unwrap();
    broker.kill_and_restart().unwrap();
    assert!(
        broker.wait_listed_with(&mnt, pid),
        "not adopted\n{}",
        broker.log_tail(20)
    );
    fs::write(mnt.join("after"), pattern(2, 100_000)).unwrap();
    broker.unmount(&mnt).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !procfs::pid_alive(pid)),
        "the worker is gone"
    );
    // Written clean by the unmount: nothing left for a journal replay.
    let stats = image::debugfs(&img, "stats").unwrap();
    let state = stats
        .lines()
        .find(|l| l.starts_with("Filesystem state:"))
        .unwrap_or_default();
    assert!(
        state.ends_with(" clean") && !stats.contains("needs_recovery"),
        "the adopted worker did not write its filesystem clean: {state}"
    );
    fsck_clean(&img).unwrap();
    broker.mount(&img, &mnt, "ro").unwrap();
    assert!(fs::read(mnt.join("before")).unwrap() == pattern(1, 100_000));
    assert!(fs::read(mnt.join("after")).unwrap() == pattern(2, 100_000));
    broker.unmount(&mnt).unwrap();
}

//! A read-write worker keeps serving across what real machines do to a
//! process: its cgroup frozen and thawed (v1's freezer controller and v2's
//! `cgroup.freeze`, which `systemctl freeze` uses; both on a hybrid
//! machine), SIGSTOP/SIGCONT, and a debugger attaching to every thread and
//! detaching. Each interrupts the worker's threads in whatever they were
//! blocked in (reading /dev/fuse, waiting on a condvar with a timeout,
//! sleeping); the kernel then restarts those calls, some through
//! restart_syscall, which the seccomp filter must allow.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image::fsck_clean;
use safemount_tests::interrupt::{self, Freezer, FreezerKind};
use safemount_tests::ops;
use safemount_tests::procfs;
use safemount_tests::util::{Rng, TempDir, pattern, require_root};

const MIB: u64 = 1 << 20;
/// Files the load keeps at once (~50 MiB of the 256 MiB image).
const MAX_LIVE_FILES: usize = 120;

#[derive(Debug, Clone, Copy)]
enum Event {
    Freeze(FreezerKind),
    Stop,
    Ptrace,
}

/// What the load wrote: file name under the mount → (seed, length).
type Written = BTreeMap<String, (u64, usize)>;

/// Writes and fsyncs files (each a new transaction: write-back and commits
/// run all the time), renames some and removes some, until `done` is set
/// and at least `min_files` were written. Returns what must be on disk.
fn load(
    mnt: &Path,
    done: &AtomicBool,
    min_files: usize,
    max_live: usize,
) -> std::io::Result<Written> {
    let mut written = Written::new();
    let dir = mnt.join("load");
    fs::create_dir(&dir)?;
    let mut i = 0u64;
    while !done.load(Ordering::Relaxed) || (i as usize) < min_files {
        let name = format!("load/f{i}");
        let len = (32 * 1024 + (i as usize * 40_961) % (768 * 1024)) & !7;
        let mut f = File::create(mnt.join(&name))?;
        f.write_all(&pattern(i, len))?;
        f.sync_all()?;
        written.insert(name.clone(), (i, len));
        if i % 7 == 3 {
            let to = format!("load/r{i}");
            fs::rename(mnt.join(&name), mnt.join(&to))?;
            let v = written.remove(&name).unwrap();
            written.insert(to, v);
        }
        if i % 11 == 5 {
            let victim = format!("load/f{}", i - 1);
            if written.remove(&victim).is_some() {
                fs::remove_file(mnt.join(&victim))?;
            }
        }
        if i.is_multiple_of(13) {
            fs::create_dir(dir.join(format!("d{i}")))?;
        }
        // A bounded working set: an idle machine writes for the whole
        // run, and the image must not fill up.
        while written.len() > max_live {
            if let Some((old, _)) = written.pop_first() {
                fs::remove_file(mnt.join(old))?;
            }
        }
        i += 1;
    }
    Ok(written)
}

fn check(mnt: &Path, written: &Written) {
    for (name, (seed, len)) in written {
        let got = fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert!(
            got == pattern(*seed, *len),
            "{name}: {} bytes read, {len} written, contents differ",
            got.len()
        );
    }
}

/// The load alone, long enough for the directory to grow an extent tree
/// while files are renamed in it (a rename once failed with EUCLEAN there:
/// it looked the directory's blocks up through the committed tree, whose
/// new index block the rename's own transaction had just made).
#[test]
fn load_alone_grows_and_renames_in_a_fragmented_directory() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no worker");
        return;
    }
    let tmp = TempDir::new("signals-load").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &[], 256 * MIB).unwrap();
    let mnt: PathBuf = tmp.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img, &mnt, "rw").unwrap();
    let written = load(&mnt, &AtomicBool::new(true), 300, usize::MAX)
        .unwrap_or_else(|e| panic!("the load failed: {e}\n{}", broker.log_tail(20)));
    check(&mnt, &written);
    broker.unmount(&mnt).unwrap();
    if let Err(e) = fsck_clean(&img) {
        panic!("image not clean after the load: {e:#}");
    }
}

#[test]
fn worker_survives_freeze_stop_and_ptrace_under_load() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no worker");
        return;
    }
    let tmp = TempDir::new("signals").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &[], 256 * MIB).unwrap();
    let mnt: PathBuf = tmp.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker
        .mount(&img, &mnt, "rw")
        .unwrap_or_else(|e| panic!("mount: {e}\n{}", broker.log_tail(20)));
    let pid = broker.worker_pid(&mnt).unwrap();

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("signals: event order seed {seed}");
    let mut rng = Rng::new(seed);
    let kinds = FreezerKind::available();
    match kinds.len() {
        0 => safemount_tests::skip::skip("no cgroup freezer (v1 or v2) on this machine"),
        1 => eprintln!("signals: only the {kinds:?} cgroup freezer here"),
        _ => {}
    }
    let freezers: Vec<Freezer> = kinds
        .iter()
        .map(|k| Freezer::adopt(pid, *k).unwrap())
        .collect();
    let mut events: Vec<Event> = kinds
        .iter()
        .map(|k| (Event::Freeze(*k), 20))
        .chain([(Event::Stop, 20), (Event::Ptrace, 10)])
        .flat_map(|(e, n)| std::iter::repeat_n(e, n))
        .collect();
    for i in (1..events.len()).rev() {
        events.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }

    let done = AtomicBool::new(false);
    let written = std::thread::scope(|s| {
        let writer = s.spawn(|| load(&mnt, &done, 60, MAX_LIVE_FILES));
        for (n, ev) in events.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 150));
            let hold = Duration::from_millis(10 + rng.next_u64() % 300);
            let r = match ev {
                Event::Freeze(kind) => {
                    let freezer = freezers.iter().find(|f| f.kind() == *kind).unwrap();
                    freezer.freeze().and_then(|()| {
                        std::thread::sleep(hold);
                        freezer.thaw()
                    })
                }
                Event::Stop => interrupt::stop(pid).and_then(|()| {
                    std::thread::sleep(hold);
                    interrupt::cont(pid)
                }),
                Event::Ptrace => interrupt::ptrace_pause(pid, hold),
            };
            if let Err(e) = r {
                done.store(true, Ordering::Relaxed);
                panic!("event {n} ({ev:?}): {e:#}\n{}", broker.log_tail(20));
            }
            assert!(
                procfs::pid_alive(pid),
                "the worker died after event {n} ({ev:?})\n{}",
                broker.log_tail(20)
            );
        }
        done.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    drop(freezers);
    let written =
        written.unwrap_or_else(|e| panic!("the load failed: {e}\n{}", broker.log_tail(20)));
    assert!(
        procfs::pid_alive(pid),
        "the worker died\n{}",
        broker.log_tail(20)
    );
    assert_eq!(
        broker.worker_pid(&mnt).unwrap(),
        pid,
        "the same worker still serves"
    );
    check(&mnt, &written);
    broker
        .unmount(&mnt)
        .unwrap_or_else(|e| panic!("unmount: {e}\n{}", broker.log_tail(20)));
    if let Err(e) = fsck_clean(&img) {
        panic!("image not clean after the load: {e:#}");
    }
    // What reached the disk, read back by a new worker.
    broker.mount(&img, &mnt, "ro").unwrap();
    check(&mnt, &written);
    broker.unmount(&mnt).unwrap();
}

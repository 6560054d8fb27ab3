//! Load: 32 clients mount and unmount 8 images concurrently for a bounded
//! number of rounds, through the real worker (or, with a skip line that
//! `SAFEMOUNT_TEST_STRICT=1` turns into a failure, the fake one if the real
//! one is not built). Every request must succeed or fail cleanly (Busy for
//! a contended image); afterwards no mount, automatic mount point, lock,
//! broker fd or worker process may be left.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod harness;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::*;
use safemount_broker::client::ClientError;
use safemount_proto::ErrorKind;

const CLIENTS: usize = 32;
const IMAGES: usize = 8;
const ROUNDS: usize = 5;

#[derive(Debug, Default)]
struct Tally {
    mounted: usize,
    busy: usize,
    failures: Vec<String>,
}

#[test]
fn many_clients_mount_and_unmount_concurrently() {
    if !have_root_and_fuse() {
        return;
    }
    // The real worker when built; otherwise say (on stderr) that this run
    // only loads the broker with the fake one, which strict mode refuses.
    let real_path = bin_dir().join("safemount-worker");
    let (worker, real) = if real_path.exists() {
        (real_path, true)
    } else {
        skip(&format!(
            "{} not built: falling back to the fake worker (blank images, no ext4)",
            real_path.display()
        ));
        match fake_worker() {
            Some(w) => (w, false),
            None => return,
        }
    };
    let s = Scratch::new("load");
    let b = Broker::start(&s, &worker);
    let tag = std::process::id() % 10000;
    let images: Vec<PathBuf> = (0..IMAGES)
        .map(|i| {
            let name = format!("img{i}.img");
            if real {
                s.ext4_image(&name, format!("ld{tag}-{i}").as_bytes())
            } else {
                s.blank_image(&name)
            }
        })
        .collect();
    let fds_before = settled_fd_count(b.pid());
    let started = Instant::now();
    let tally = Mutex::new(Tally::default());

    std::thread::scope(|scope| {
        for c in 0..CLIENTS {
            let (b, s, images, tally) = (&b, &s, &images, &tally);
            scope.spawn(move || {
                let conn = b.connect();
                for round in 0..ROUNDS {
                    let img = &images[(c * 3 + round) % IMAGES];
                    // Even clients read, odd ones ask for rw (exclusive);
                    // every third request names its own directory, the
                    // rest get an automatic one.
                    let opts = if c % 2 == 0 { "ro" } else { "rw" };
                    let named = (c + round) % 3 == 0;
                    let dir = s.path(&format!("c{c}-r{round}"));
                    if named {
                        std::fs::create_dir_all(&dir).unwrap();
                    }
                    let r = conn.mount(img, named.then_some(dir.as_path()), opts);
                    let mut t = tally.lock().unwrap();
                    match r {
                        Ok((mp, _)) => {
                            t.mounted += 1;
                            drop(t);
                            if named {
                                assert_eq!(mp, dir);
                            }
                            if real && round % 2 == 0 {
                                // Touch the filesystem once.
                                assert_eq!(
                                    std::fs::read(mp.join("hello.txt")).unwrap(),
                                    b"hello\n"
                                );
                            }
                            if let Err(e) = conn.unmount(&mp) {
                                tally
                                    .lock()
                                    .unwrap()
                                    .failures
                                    .push(format!("unmount {mp:?}: {e}"));
                            }
                        }
                        Err(ClientError::Broker {
                            kind: ErrorKind::Busy,
                            message,
                        }) if message.contains("in use by another process") => t.busy += 1,
                        Err(e) => t.failures.push(format!("client {c} round {round}: {e}")),
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let t = tally.into_inner().unwrap();
    eprintln!(
        "load: {} mounts, {} refused busy, {} failures in {:.1} s ({} worker)",
        t.mounted,
        t.busy,
        t.failures.len(),
        elapsed.as_secs_f64(),
        if real { "real" } else { "fake" }
    );
    assert!(
        t.failures.is_empty(),
        "failures: {:#?}\n{}",
        t.failures,
        b.log()
    );
    assert_eq!(t.mounted + t.busy, CLIENTS * ROUNDS);
    // Both outcomes must have happened: 4 clients per image, half of them
    // asking for rw, start together, so some requests meet a held lock.
    assert!(
        t.mounted >= IMAGES,
        "too few mounts succeeded: {}",
        t.mounted
    );
    assert!(
        t.busy > 0,
        "no request was refused busy: the lock contention this test is for never happened"
    );

    // Nothing left: processes, state, mounts, mount points, fds, locks.
    b.assert_idle();
    let media = Path::new(safemount_broker::mountpoint::MEDIA_ROOT).join("root");
    let prefix = format!("ld{tag}-");
    for m in safemount_mounts() {
        assert!(!m.starts_with(&s.0), "mount left: {m:?}");
        assert!(!m.to_string_lossy().contains(&prefix), "mount left: {m:?}");
    }
    if let Ok(dir) = std::fs::read_dir(&media) {
        for e in dir.flatten() {
            assert!(
                !e.file_name().to_string_lossy().starts_with(&prefix),
                "mount point left: {:?}",
                e.path()
            );
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || settled_fd_count(b.pid())
            <= fds_before),
        "broker fds: {} before, {} after",
        fds_before,
        fd_count(b.pid())
    );
    // No lock left: every image mounts read-write once more.
    let conn = b.connect();
    for img in &images {
        let (mp, _) = conn
            .mount(img, None, "rw")
            .unwrap_or_else(|e| panic!("{img:?} still locked? {e}\n{}", b.log()));
        conn.unmount(&mp).unwrap();
    }
    b.assert_idle();
    assert!(elapsed < Duration::from_secs(120), "too slow: {elapsed:?}");
}

/// Many mounts at once. Each mount costs the broker three fds, so a
/// broker kept at the usual soft limit of 1,024 open files failed the
/// 337th mount ("cannot start worker: Too many open files"); it raises its
/// soft limit to the hard one at start: started at 64 here, it holds 40
/// mounts (it failed the 17th before). And the list outgrows one message
/// (64 KiB; each mount point here is a 3,000-byte path, as 500 short ones
/// would be): it comes in parts, and `list --json` shows every mount
/// (before: "malformed message: LimitExceeded").
#[test]
fn many_mounts_at_once() {
    if !have_root_and_fuse() {
        return;
    }
    let Some(worker) = real_worker() else {
        return;
    };
    let s = Scratch::new("many");
    let b = Broker::builder(&s, &worker).soft_open_files(64).start();
    let deep = vec!["d".repeat(250); 12].join("/");
    let mounts: Vec<PathBuf> = (0..40)
        .map(|i| {
            let img = s.ext4_image(&format!("i{i}.img"), format!("L{i}").as_bytes());
            let mp = s.dir(&format!("{deep}/m{i}"));
            let out = b.client(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "mount {i}: {}\n{}",
                stderr(&out),
                b.log()
            );
            mp
        })
        .collect();
    assert!(b.log().contains("open files limit raised"), "{}", b.log());
    let out = b.client(&["list", "--json"]);
    assert!(out.status.success(), "list: {}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let listed: Vec<PathBuf> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| canonical(Path::new(e["mountpoint"].as_str().unwrap())))
        .collect();
    for mp in &mounts {
        assert!(
            listed.contains(&canonical(mp)),
            "{} not listed",
            mp.display()
        );
    }
    assert_eq!(listed.len(), mounts.len());
    for mp in &mounts {
        assert!(std::fs::read(mp.join("hello.txt")).is_ok_and(|c| c == b"hello\n"));
        let out = b.client(&["unmount", mp.to_str().unwrap()]);
        assert!(out.status.success(), "unmount: {}", stderr(&out));
    }
}

//! The worker serving a real mount is sandboxed: unprivileged ids, no
//! capabilities, no_new_privs, a seccomp filter, only the fds it needs,
//! its own (empty) root and namespaces.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::os::unix::fs::MetadataExt;

use safemount_tests::broker::{Broker, kernel_standin};
use safemount_tests::image;
use safemount_tests::procfs;
use safemount_tests::util::{TempDir, require_root};

fn field<'a>(st: &'a [(String, String)], k: &str) -> &'a str {
    st.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {k} in /proc/PID/status"))
}

#[test]
fn worker_is_sandboxed() {
    if !require_root() {
        return;
    }
    if kernel_standin() {
        safemount_tests::skip::skip("the kernel stand-in has no worker");
        return;
    }
    let tmp = TempDir::new("sandbox").unwrap();
    let img = image::tiny_image(tmp.path()).unwrap();
    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    broker
        .mount(&img, &mnt, "ro")
        .unwrap_or_else(|e| panic!("mount: {e}\n{}", broker.log_tail(20)));
    // Make it serve something first, so all its threads exist.
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).unwrap(),
        b"hello from a tiny image\n"
    );
    let pid = broker.worker_pid(&mnt).unwrap();

    let mut problems = Vec::new();
    let mut seen = Vec::new();
    // Every thread, not just the main one.
    let tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for tid in &tasks {
        let st = procfs::status(*tid).unwrap();
        for k in ["Uid", "Gid"] {
            let v: Vec<&str> = field(&st, k).split_whitespace().collect();
            if v.len() != 4 || v.contains(&"0") {
                problems.push(format!("task {tid}: {k} {v:?} (all four must be non-zero)"));
            }
        }
        if !field(&st, "Groups").is_empty() {
            problems.push(format!(
                "task {tid}: supplementary groups {:?}",
                field(&st, "Groups")
            ));
        }
        for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            if !field(&st, k).trim_start_matches('0').is_empty() {
                problems.push(format!("task {tid}: {k} = {}", field(&st, k)));
            }
        }
        if field(&st, "NoNewPrivs") != "1" {
            problems.push(format!(
                "task {tid}: NoNewPrivs = {}",
                field(&st, "NoNewPrivs")
            ));
        }
        if field(&st, "Seccomp") != "2" {
            problems.push(format!("task {tid}: Seccomp = {}", field(&st, "Seccomp")));
        }
        if *tid == pid {
            seen.push(format!(
                "Uid {} Gid {} CapEff {} CapBnd {} NoNewPrivs {} Seccomp {}",
                field(&st, "Uid"),
                field(&st, "Gid"),
                field(&st, "CapEff"),
                field(&st, "CapBnd"),
                field(&st, "NoNewPrivs"),
                field(&st, "Seccomp")
            ));
        }
    }

    // File descriptors: the device, /dev/fuse, stderr; nothing else but
    // /dev/null on 0/1 and the one socket to the broker.
    let fds = procfs::fds(pid).unwrap();
    seen.push(format!("fds {fds:?}"));
    let img_s = img.to_string_lossy().into_owned();
    let device = fds.iter().filter(|(_, t)| *t == img_s).count();
    let fuse = fds.iter().filter(|(_, t)| t == "/dev/fuse").count();
    if device != 1 {
        problems.push(format!(
            "expected exactly one fd on the image {img_s}, found {device}"
        ));
    }
    if fuse != 1 {
        problems.push(format!("expected exactly one /dev/fuse fd, found {fuse}"));
    }
    let mut sockets = 0;
    for (n, t) in &fds {
        let ok = *t == img_s
            || t == "/dev/fuse"
            || *n == 2
            || (*n <= 1 && t == "/dev/null")
            || (t.starts_with("socket:") && {
                sockets += 1;
                sockets == 1
            });
        if !ok {
            problems.push(format!("unexpected fd {n} -> {t}"));
        }
    }

    // Its root is an empty directory, not the host's.
    let root = std::fs::read_dir(format!("/proc/{pid}/root")).map(|rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    });
    match &root {
        Ok(names) if names.is_empty() => {}
        Ok(names) => problems.push(format!("worker root is not empty: {names:?}")),
        // Root (this test) may read any task's root: an error here means
        // the check did not happen, which is a problem, not a pass.
        Err(e) => problems.push(format!("cannot list /proc/{pid}/root: {e}")),
    }
    let host = std::fs::metadata("/").unwrap();
    match std::fs::metadata(format!("/proc/{pid}/root")) {
        Ok(r) if (r.dev(), r.ino()) == (host.dev(), host.ino()) => {
            problems.push("worker root is the host root".into())
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("cannot stat /proc/{pid}/root: {e}")),
    }
    for ns in ["mnt", "net", "ipc", "uts", "cgroup"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"));
        match its {
            Ok(t) if t == mine => problems.push(format!(
                "worker shares the {ns} namespace ({})",
                t.display()
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("cannot read /proc/{pid}/ns/{ns}: {e}")),
        }
    }

    // Still serving after all that.
    assert_eq!(
        std::fs::read(mnt.join("sub/data.bin")).unwrap().len(),
        100_000
    );
    broker.unmount(&mnt).unwrap();
    eprintln!(
        "worker {pid} ({} threads): {}",
        tasks.len(),
        seen.join("; ")
    );
    assert!(
        problems.is_empty(),
        "sandbox of worker {pid}:\n  {}\nseen: {}",
        problems.join("\n  "),
        seen.join("\n  ")
    );
}

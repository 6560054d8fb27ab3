//! The worker end to end, without the broker: the test plays the broker
//! (socketpair as fd 3, Start with an image fd, its own FUSE mount, Serve
//! with the /dev/fuse fd), then reads the mount and unmounts. Needs root,
//! /dev/fuse and mkfs.ext4; skipped with a message otherwise.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use safemount_proto::{Atime, PROTOCOL_VERSION, ProbeReport, WorkerReply, WorkerRequest};

const WORKER: &str = env!("CARGO_BIN_EXE_safemount-worker");

/// Skips and test knobs, shared with every test crate (see the file).
#[path = "../../tests/src/skip.rs"]
mod skip;

fn can_run() -> bool {
    if !skip::require_root("serving a real mount") {
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip::skip("no /dev/fuse");
        return false;
    }
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        skip::skip("no mkfs.ext4");
        return false;
    }
    true
}

/// The `safemount` user if it exists, else nobody (65534).
fn sandbox_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3
            && f[0] == "safemount"
            && let (Ok(u), Ok(g)) = (f[2].parse(), f[3].parse())
        {
            return (u, g);
        }
    }
    (65534, 65534)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "safemount-worker-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0.join("mnt"), MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn big_content() -> Vec<u8> {
    (0..3 * 1024 * 1024 + 123)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// Source tree: a small file with an xattr, a directory with a symlink,
/// a 3 MiB file (several 1 MiB reads), many entries (several readdir
/// batches).
fn make_tree(src: &Path) {
    std::fs::write(src.join("hello.txt"), b"hello world\n").expect("write");
    let status = Command::new("setfattr")
        .args(["-n", "user.test", "-v", "value1"])
        .arg(src.join("hello.txt"))
        .status()
        .expect("setfattr");
    assert!(status.success());
    let status = Command::new("setfattr")
        .args(["-n", "trusted.admin", "-v", "hidden"])
        .arg(src.join("hello.txt"))
        .status()
        .expect("setfattr trusted");
    assert!(status.success());
    std::fs::create_dir(src.join("sub")).expect("mkdir");
    symlink("../hello.txt", src.join("sub/link")).expect("symlink");
    // A sparse file: a hole, 8 KiB of data at 1 MiB, a hole to 2 MiB.
    {
        use std::os::unix::fs::FileExt;
        let f = File::create(src.join("sub/sparse")).expect("create sparse");
        f.write_all_at(&[0xab; 8192], 1 << 20)
            .expect("write sparse");
        f.set_len(2 << 20).expect("truncate sparse");
    }
    std::fs::write(src.join("big"), big_content()).expect("write big");
    std::fs::create_dir(src.join("many")).expect("mkdir");
    for i in 0..300 {
        std::fs::write(src.join(format!("many/file-{i:04}")), format!("{i}\n")).expect("write");
    }
    std::fs::set_permissions(
        src.join("hello.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");
    // Readable by "other", but a named ACL entry denies uid 1000.
    std::fs::write(src.join("acl-file"), b"secret\n").expect("write");
    std::fs::set_permissions(src.join("acl-file"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let status = Command::new("setfacl")
        .args(["-m", "u:1000:---"])
        .arg(src.join("acl-file"))
        .status()
        .expect("setfacl");
    assert!(status.success());
}

fn make_image(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir(&src).expect("mkdir src");
    make_tree(&src);
    let img = dir.join("fs.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "worker-test", "-d"])
        .arg(&src)
        .arg(&img)
        .arg("16M")
        .output()
        .expect("mkfs.ext4");
    assert!(out.status.success(), "mkfs: {:?}", out);
    img
}

/// Spawns the worker with `sock` as fd 3, empty environment, stdin and
/// stdout on /dev/null.
fn spawn_worker(sock: OwnedFd) -> Child {
    let raw = sock.as_raw_fd();
    let mut cmd = Command::new(WORKER);
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec the closure only calls dup2 and fcntl,
    // which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if raw == 3 {
                // dup2(3, 3) would keep close-on-exec: clear it instead.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn the worker");
    drop(sock);
    child
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("worker did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Broker {
    sock: OwnedFd,
    child: Child,
}

fn start_worker(device: OwnedFd, read_only: bool, version: u32) -> (Broker, WorkerReply) {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let child = spawn_worker(theirs);
    let (uid, gid) = sandbox_ids();
    safemount_proto::send(
        ours.as_fd(),
        &WorkerRequest::Start {
            version,
            read_only,
            noload: false,
            uid,
            gid,
            source_name: "test image".into(),
            errors: None,
            quota_limits: [false; 3],
            atime: Atime::Relatime,
            nodiratime: false,
        },
        &[device.as_fd()],
    )
    .expect("send Start");
    drop(device);
    let (reply, _) = safemount_proto::recv::<WorkerReply>(ours.as_fd(), 0).expect("recv reply");
    (Broker { sock: ours, child }, reply)
}

fn mount_fuse(mnt: &Path) -> File {
    let fuse = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("open /dev/fuse");
    let opts = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        fuse.as_raw_fd()
    );
    nix::mount::mount(
        Some("safemount"),
        mnt,
        Some("fuse.safemount"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .expect("mount fuse");
    fuse
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn serves_an_image_read_only_and_exits_on_unmount() {
    if !can_run() {
        return;
    }
    let dir = TempDir::new("serve");
    let img = make_image(&dir.0);
    let mnt = dir.0.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let device: OwnedFd = File::open(&img).expect("open image").into();

    let (mut broker, reply) = start_worker(device, true, PROTOCOL_VERSION);
    let WorkerReply::Probed(ProbeReport {
        label,
        fs_type,
        read_only,
        sandbox,
        ..
    }) = reply
    else {
        let _ = broker.child.kill();
        panic!("expected Probed, got {reply:?}");
    };
    assert_eq!(label, b"worker-test");
    assert_eq!(fs_type, "ext4");
    assert!(read_only);
    assert!(sandbox.seccomp && sandbox.namespaces, "{sandbox:?}");

    let fuse = mount_fuse(&mnt);
    safemount_proto::send(broker.sock.as_fd(), &WorkerRequest::Serve, &[fuse.as_fd()])
        .expect("send Serve");
    drop(fuse);
    let (reply, _) =
        safemount_proto::recv::<WorkerReply>(broker.sock.as_fd(), 0).expect("recv Serving");
    assert_eq!(reply, WorkerReply::Serving);

    // The tree, as the kernel sees it through the worker.
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .expect("readdir root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["acl-file", "big", "hello.txt", "lost+found", "many", "sub"]
    );
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).expect("read hello"),
        b"hello world\n"
    );
    let meta = std::fs::metadata(mnt.join("hello.txt")).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.len(), 12);
    assert_eq!(
        std::fs::read_link(mnt.join("sub/link")).expect("readlink"),
        Path::new("../hello.txt")
    );
    assert_eq!(
        std::fs::read(mnt.join("sub/link")).expect("read through link"),
        b"hello world\n"
    );
    assert!(std::fs::read(mnt.join("big")).expect("read big") == big_content());
    let mut many: Vec<String> = std::fs::read_dir(mnt.join("many"))
        .expect("readdir many")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    many.sort();
    assert_eq!(many.len(), 300);
    assert_eq!(many[299], "file-0299");
    assert_eq!(
        std::fs::read_to_string(mnt.join("many/file-0123")).expect("read"),
        "123\n"
    );
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", "user.test"])
        .arg(mnt.join("hello.txt"))
        .output()
        .expect("getfattr");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"value1");
    let out = Command::new("getfattr")
        .args(["-d", "--absolute-names"])
        .arg(mnt.join("hello.txt"))
        .output()
        .expect("getfattr -d");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("user.test=\"value1\""),
        "{out:?}"
    );
    // trusted.* names are listed to root only, as ext4 does.
    let list_as = |uid: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid", uid, "--regid", uid, "--clear-groups"])
            .args(["getfattr", "-d", "-m", "-", "--absolute-names"])
            .arg(mnt.join("hello.txt"))
            .output()
            .expect("setpriv getfattr");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(
        list_as("0").contains("trusted.admin"),
        "root sees trusted.*"
    );
    let user_view = list_as("1001");
    assert!(user_view.contains("user.test"), "{user_view}");
    assert!(!user_view.contains("trusted."), "{user_view}");
    // The kernel enforces the ACL: uid 1000 is denied, uid 1001 ("other")
    // may read.
    let cat_as = |uid: &str| {
        Command::new("setpriv")
            .args(["--reuid", uid, "--regid", uid, "--clear-groups", "cat"])
            .arg(mnt.join("acl-file"))
            .output()
            .expect("setpriv")
    };
    let denied = cat_as("1000");
    assert!(!denied.status.success(), "uid 1000 read an ACL-denied file");
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{denied:?}"
    );
    let allowed = cat_as("1001");
    assert!(allowed.status.success(), "{allowed:?}");
    assert_eq!(allowed.stdout, b"secret\n");
    // SEEK_DATA / SEEK_HOLE reach the engine; past the data: ENXIO.
    {
        use nix::unistd::{Whence, lseek};
        let f = File::open(mnt.join("sub/sparse")).expect("open sparse");
        assert_eq!(lseek(f.as_fd(), 0, Whence::SeekData), Ok(1 << 20));
        assert_eq!(
            lseek(f.as_fd(), 1 << 20, Whence::SeekHole),
            Ok((1 << 20) + 8192)
        );
        assert_eq!(
            lseek(f.as_fd(), (1 << 20) + 8192, Whence::SeekData),
            Err(nix::errno::Errno::ENXIO)
        );
        assert_eq!(
            lseek(f.as_fd(), 3 << 20, Whence::SeekHole),
            Err(nix::errno::Errno::ENXIO)
        );
    }
    // Several readers at once, across the FUSE threads.
    std::thread::scope(|s| {
        for t in 0..8 {
            let mnt = &mnt;
            s.spawn(move || {
                for i in (t..300).step_by(8) {
                    let got = std::fs::read_to_string(mnt.join(format!("many/file-{i:04}")))
                        .expect("parallel read");
                    assert_eq!(got, format!("{i}\n"));
                }
                assert!(std::fs::read(mnt.join("big")).expect("parallel big") == big_content());
            });
        }
    });
    // Writes are refused on a read-only mount.
    assert!(
        OpenOptions::new()
            .write(true)
            .open(mnt.join("hello.txt"))
            .is_err()
    );
    assert!(std::fs::metadata(mnt.join("missing")).is_err());
    let st = nix::sys::statvfs::statvfs(&mnt).expect("statvfs");
    assert!(st.blocks() > 0);

    // Still alive, still sandboxed, serving with several threads.
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.child.id()))
        .expect("worker status");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    assert_eq!(status_field(&status, "CapEff:"), "0000000000000000");
    let threads: u32 = status_field(&status, "Threads:").parse().unwrap_or(0);
    assert!(threads > 1, "expected several FUSE threads: {status}");

    nix::mount::umount2(&mnt, MntFlags::empty()).expect("umount");
    let exit = wait_with_timeout(&mut broker.child, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "worker exit: {exit:?}");
}

/// Starts a worker on `img`, mounts, sends Serve; returns the broker side
/// and the mount point.
fn mount_and_serve(dir: &TempDir, img: &Path) -> (Broker, PathBuf) {
    let mnt = dir.0.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let device: OwnedFd = File::open(img).expect("open image").into();
    let (mut broker, reply) = start_worker(device, true, PROTOCOL_VERSION);
    if !matches!(reply, WorkerReply::Probed(_)) {
        let _ = broker.child.kill();
        panic!("expected Probed, got {reply:?}");
    }
    let fuse = mount_fuse(&mnt);
    safemount_proto::send(broker.sock.as_fd(), &WorkerRequest::Serve, &[fuse.as_fd()])
        .expect("send Serve");
    drop(fuse);
    let (reply, _) =
        safemount_proto::recv::<WorkerReply>(broker.sock.as_fd(), 0).expect("recv Serving");
    assert_eq!(reply, WorkerReply::Serving);
    (broker, mnt)
}

/// A corrupt inode fails alone: its name is still listed (readdirplus
/// gives it a placeholder with TTL 0), stat and open fail with EUCLEAN,
/// everything else keeps working, and the worker survives.
#[test]
fn a_corrupt_inode_fails_alone() {
    if !can_run() {
        return;
    }
    let dir = TempDir::new("corrupt");
    let img = make_image(&dir.0);
    let out = Command::new("debugfs")
        .args(["-w", "-R", "set_inode_field /hello.txt checksum 0x1234"])
        .arg(&img)
        .output()
        .expect("debugfs");
    assert!(out.status.success(), "{out:?}");
    let (mut broker, mnt) = mount_and_serve(&dir, &img);

    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .expect("readdir root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["acl-file", "big", "hello.txt", "lost+found", "many", "sub"]
    );
    for attempt in 0..2 {
        let err = std::fs::metadata(mnt.join("hello.txt")).expect_err("stat a corrupt inode");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EUCLEAN),
            "attempt {attempt}: {err}"
        );
    }
    let err = std::fs::read(mnt.join("hello.txt")).expect_err("read a corrupt inode");
    assert_eq!(err.raw_os_error(), Some(libc::EUCLEAN), "{err}");
    assert!(std::fs::read(mnt.join("big")).expect("read big") == big_content());

    nix::mount::umount2(&mnt, MntFlags::empty()).expect("umount");
    let exit = wait_with_timeout(&mut broker.child, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "worker exit: {exit:?}");
}

#[test]
fn refuses_a_device_that_is_not_ext4() {
    if !can_run() {
        return;
    }
    let dir = TempDir::new("refuse");
    let img = dir.0.join("zeros.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("write zeros");
    let device: OwnedFd = File::open(&img).expect("open").into();
    let (mut broker, reply) = start_worker(device, true, PROTOCOL_VERSION);
    assert!(
        matches!(reply, WorkerReply::Refused { .. }),
        "expected Refused, got {reply:?}"
    );
    let exit = wait_with_timeout(&mut broker.child, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(1), "{exit:?}");
}

#[test]
fn refuses_another_protocol_version() {
    if !can_run() {
        return;
    }
    let device: OwnedFd = File::open("/dev/null").expect("open").into();
    let (mut broker, reply) = start_worker(device, true, PROTOCOL_VERSION + 1);
    match reply {
        WorkerReply::Refused { reason } => assert!(reason.contains("version"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    let exit = wait_with_timeout(&mut broker.child, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(1), "{exit:?}");
}

#[test]
fn exits_quietly_when_the_broker_cancels_before_serve() {
    if !can_run() {
        return;
    }
    let dir = TempDir::new("cancel");
    let img = make_image(&dir.0);
    let device: OwnedFd = File::open(&img).expect("open image").into();
    let (mut broker, reply) = start_worker(device, true, PROTOCOL_VERSION);
    assert!(matches!(reply, WorkerReply::Probed(_)), "{reply:?}");
    drop(broker.sock);
    let exit = wait_with_timeout(&mut broker.child, Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

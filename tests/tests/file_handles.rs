//! File handles outlive the kernel's inode cache, as on ext4
//! (open_by_handle_at, and so NFS export of a mount): a handle taken with
//! name_to_handle_at opens its file or directory after the kernel has
//! dropped every cached inode; a handle of a deleted file, or of an inode
//! number since reused, is stale (ESTALE); a handle forged for the journal
//! inode is stale too, and no filesystem error.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use safemount_tests::broker::Broker;
use safemount_tests::util::{TempDir, require_root};
use safemount_tests::{image, ops};

/// A file handle as name_to_handle_at fills it (struct file_handle with
/// room for MAX_HANDLE_SZ bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; 128],
}

fn handle_of(path: &Path) -> Handle {
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut mount_id = 0;
    // SAFETY: `h` is a file_handle header followed by the 128 bytes its
    // handle_bytes announces; `c` is a NUL-terminated path.
    let r = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&raw mut h).cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "name_to_handle_at {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    h
}

fn open_by_handle(
    mount: &std::fs::File,
    mut h: Handle,
    flags: i32,
) -> std::io::Result<std::fs::File> {
    // SAFETY: `h` is a handle as name_to_handle_at filled it (or one
    // altered in its data only); the fd returned is ours alone.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&raw mut h).cast::<libc::file_handle>(),
            flags,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nothing else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Makes the kernel drop every unused dentry and inode (FORGETs to the
/// worker for this mount's).
fn drop_inode_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

fn stale(r: std::io::Result<std::fs::File>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::ESTALE))
}

#[test]
fn handles_open_after_the_inode_cache_is_dropped() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("handles").unwrap();
    let img = tmp.join("fs.img");
    ops::make_empty_image(&img, &[], 64 << 20).unwrap();
    let mnt = tmp.join("mnt");
    let broker = Broker::with_mount(&img, &mnt, "rw");
    std::fs::create_dir(mnt.join("d")).unwrap();
    let files: Vec<_> = (0..10).map(|i| mnt.join(format!("d/f{i}"))).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(f, format!("file {i}\n")).unwrap();
    }
    let handles: Vec<_> = files.iter().map(|f| handle_of(f)).collect();
    let dir_handle = handle_of(&mnt.join("d"));
    let doomed = handle_of(&mnt.join("d/f9"));
    std::fs::remove_file(&files[9]).unwrap();
    // The journal inode, by the handle format of the kernel's FUSE client
    // (node id high and low words, then the generation).
    let mut forged = handles[0];
    forged.data[..8].copy_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
    let root = std::fs::File::open(&mnt).unwrap();
    drop_inode_cache();

    for (i, h) in handles.iter().enumerate().take(9) {
        let mut got = String::new();
        open_by_handle(&root, *h, libc::O_RDONLY)
            .unwrap_or_else(|e| panic!("open_by_handle_at of d/f{i}: {e}"))
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, format!("file {i}\n"));
    }
    let dir = open_by_handle(&root, dir_handle, libc::O_RDONLY | libc::O_DIRECTORY)
        .unwrap_or_else(|e| panic!("open_by_handle_at of d: {e}"));
    let listed = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .unwrap()
        .count();
    assert_eq!(listed, 9);
    assert!(
        stale(open_by_handle(&root, doomed, libc::O_RDONLY)),
        "deleted file opened"
    );
    assert!(
        stale(open_by_handle(&root, forged, libc::O_RDONLY)),
        "journal inode opened"
    );

    // A number freed and taken again: the old handle is stale.
    std::fs::remove_file(&files[0]).unwrap();
    drop_inode_cache();
    let reused = (0..50).map(|i| mnt.join(format!("d/new{i}"))).find(|p| {
        std::fs::write(p, b"new").unwrap();
        handle_of(p).data[..8] == handles[0].data[..8]
    });
    assert!(reused.is_some(), "no new file took the freed number");
    drop_inode_cache();
    assert!(
        stale(open_by_handle(&root, handles[0], libc::O_RDONLY)),
        "a reused number opened by an old handle"
    );
    drop(dir);
    drop(root);
    broker.unmount(&mnt).unwrap();
    // No filesystem error was recorded (ext4_error fills the superblock's
    // error fields, which dumpe2fs shows), and the image is clean.
    let dump = std::process::Command::new("dumpe2fs")
        .args(["-h"])
        .arg(&img)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        !dump.contains("FS Error count"),
        "a handle made a filesystem error:\n{dump}"
    );
    image::fsck_clean(&img).unwrap();
}

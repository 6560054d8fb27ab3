//! Setuid, setgid and file capabilities are cleared on write, truncate and
//! chown as ext4 clears them. safemount asks the kernel for
//! FUSE_HANDLE_KILLPRIV_V2 (which spares every write(2) a GETXATTR of
//! security.capability), and so takes the clearing on itself: a flag on
//! the write, and on setattr the kernel's own rule (fuser does not pass
//! the flag on). The oracle: the kernel's ext4 on a loop device runs the
//! same steps, as root and as an unprivileged user, and every file's mode
//! and capability must end the same on both. The expected outcome is
//! written out too, so that a change both sides agree on still shows.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::path::Path;

use safemount_tests::broker::Broker;
use safemount_tests::image::fsck_clean;
use safemount_tests::kernel::KernelMount;
use safemount_tests::user::TestUser;
use safemount_tests::util::{TempDir, require_root, run_ok};

/// The steps, in python: `setup` (root) makes the files, owned by the
/// user; `user` and `root` act on them; `show` prints each file's mode
/// and whether it has a capability.
const STEPS: &str = r#"
import os, sys
d, phase = sys.argv[1], sys.argv[2]
p = lambda n: os.path.join(d, n)
def write(n):
    with open(p(n), "r+b") as f:
        f.seek(0, 2)
        f.write(b"more")
if phase == "setup":
    uid, gid = int(sys.argv[3]), int(sys.argv[4])
    for n, mode in [("u_write_suid", 0o4755), ("u_write_sgid_gx", 0o2755),
                    ("u_write_sgid_nogx", 0o2745), ("u_write_plain", 0o755),
                    ("u_trunc_suid", 0o4755), ("u_trunc_sgid_gx", 0o6755),
                    ("u_chown_suid", 0o4755), ("u_chgrp_sgid_gx", 0o2755),
                    ("u_chgrp_sgid_nogx", 0o2745), ("u_write_cap", 0o755),
                    ("r_write_suid", 0o4755), ("r_trunc_suid", 0o6755),
                    ("r_chown_suid", 0o6755), ("r_write_cap", 0o755)]:
        with open(p(n), "wb") as f:
            f.write(b"x" * 5000)
        os.chown(p(n), uid, gid)
        os.chmod(p(n), mode)
    os.mkdir(p("u_dir_sgid"))
    os.chown(p("u_dir_sgid"), uid, gid)
    os.chmod(p("u_dir_sgid"), 0o2775)
elif phase == "user":
    uid, gid = os.getuid(), os.getgid()
    for n in ["u_write_suid", "u_write_sgid_gx", "u_write_sgid_nogx",
              "u_write_plain", "u_write_cap"]:
        write(n)
    os.truncate(p("u_trunc_suid"), 100)
    with open(p("u_trunc_sgid_gx"), "r+b") as f:
        f.truncate(0)
    os.chown(p("u_chown_suid"), uid, -1)
    os.chown(p("u_chgrp_sgid_gx"), -1, gid)
    os.chown(p("u_chgrp_sgid_nogx"), -1, gid)
    os.chown(p("u_dir_sgid"), -1, gid)
elif phase == "root":
    write("r_write_suid")
    write("r_write_cap")
    os.truncate(p("r_trunc_suid"), 10)
    st = os.stat(p("r_chown_suid"))
    os.chown(p("r_chown_suid"), st.st_uid, st.st_gid)
elif phase == "show":
    for n in sorted(os.listdir(d)):
        try:
            cap = "cap" if os.getxattr(p(n), "security.capability") else "-"
        except OSError:
            cap = "-"
        print("%s %o %s %d" % (n, os.stat(p(n)).st_mode & 0o7777, cap, os.stat(p(n)).st_size))
"#;

/// What ext4 gives: writes, truncates and chowns by the user clear
/// setuid, and setgid where group-executable; root's writes and truncates
/// keep them (CAP_FSETID), its chown does not; a directory keeps setgid;
/// any write drops a file capability.
const EXPECTED: &str = "\
r_chown_suid 755 - 5000
r_trunc_suid 6755 - 10
r_write_cap 755 - 5004
r_write_suid 4755 - 5004
u_chgrp_sgid_gx 755 - 5000
u_chgrp_sgid_nogx 2745 - 5000
u_chown_suid 755 - 5000
u_dir_sgid 2775 - 1024
u_trunc_sgid_gx 755 - 0
u_trunc_suid 755 - 100
u_write_cap 755 - 5004
u_write_plain 755 - 5004
u_write_sgid_gx 755 - 5004
u_write_sgid_nogx 2745 - 5004
u_write_suid 755 - 5004
";

fn python(user: Option<&TestUser>, args: &[&str]) -> String {
    let mut all = vec!["-c", STEPS];
    all.extend_from_slice(args);
    let out = match user {
        Some(u) => u.run("python3", &all).unwrap(),
        None => run_ok("python3", &all).unwrap(),
    };
    assert!(
        out.status.success(),
        "steps {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs every phase in `dir` (a mounted filesystem's directory); the
/// final listing.
fn run_steps(user: &TestUser, dir: &Path) -> String {
    let d = dir.to_str().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).unwrap();
    let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
    python(None, &[d, "setup", &uid, &gid]);
    for cap in ["u_write_cap", "r_write_cap"] {
        run_ok(
            "setcap",
            ["cap_net_raw+ep", dir.join(cap).to_str().unwrap()],
        )
        .unwrap();
    }
    let before = python(None, &[d, "show"]);
    assert!(
        before.contains("u_write_cap 755 cap") && before.contains("r_write_cap 755 cap"),
        "setcap did not take:\n{before}"
    );
    python(Some(user), &[d, "user"]);
    python(None, &[d, "root"]);
    python(None, &[d, "show"])
}

fn new_image(tmp: &TempDir, name: &str) -> std::path::PathBuf {
    let img = tmp.join(name);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run_ok("mkfs.ext4", ["-q", "-F", img.to_str().unwrap()]).unwrap();
    img
}

#[test]
fn setid_bits_and_capabilities_cleared_as_ext4_clears_them() {
    if !require_root() {
        return;
    }
    let user = TestUser::get("safemount-setid").unwrap();
    let tmp = TempDir::new("setid").unwrap();
    // The user walks to the mount points.
    run_ok("chmod", ["0755", tmp.path().to_str().unwrap()]).unwrap();

    let kernel_img = new_image(&tmp, "kernel.img");
    let kmnt = tmp.join("kmnt");
    std::fs::create_dir(&kmnt).unwrap();
    let kernel = {
        let _m = KernelMount::mount_rw(&kernel_img, &kmnt, "").unwrap();
        run_steps(&user, &kmnt.join("d"))
    };

    let img = new_image(&tmp, "safemount.img");
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img, &mnt, "rw").unwrap();
    let ours = run_steps(&user, &mnt.join("d"));
    let log = broker.log_tail(20);
    broker.unmount(&mnt).unwrap();

    assert_eq!(
        ours, kernel,
        "safemount against the kernel; broker log:\n{log}"
    );
    assert_eq!(kernel, EXPECTED, "the kernel's own outcome changed");
    fsck_clean(&img).unwrap();
}

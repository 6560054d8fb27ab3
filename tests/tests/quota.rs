//! Quota limits against the kernel: limits and grace times are set with
//! setquota on a kernel mount of a quota-feature image; one copy is then
//! mounted through safemount (`-o rw,usrquota,grpquota`), the other by
//! the kernel with the same options, and the same operations run on both
//! as an unprivileged user: a write cut short at the group's block hard
//! limit and the EDQUOT after it, the user's block soft limit crossed
//! (grace starts), usage back under it (grace ends), crossed again and
//! refused once the grace time has run out, and creates past the inode
//! hard limit. Every outcome (byte counts, errno) must match; then both
//! images are clean for e2fsck and `debugfs list_quota` (usage and limits
//! per id) agrees. Without the options neither side enforces anything.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::path::Path;
use std::sync::Mutex;

use safemount_tests::broker::Broker;
use safemount_tests::image::{debugfs, fsck_clean};
use safemount_tests::kernel::KernelMount;
use safemount_tests::user::TestUser;
use safemount_tests::util::{TempDir, require_root, run_ok};

static SERIAL: Mutex<()> = Mutex::new(());

/// The user's steps, run by python3 as the test user in directory
/// argv[1]; one line per step: its name and the byte count, "ok" or the
/// errno name.
const STEPS: &str = r#"
import errno, os, sys, time
d = sys.argv[1]
def step(name, f):
    try:
        r = f()
        print(name, "ok" if r is None else r)
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
    sys.stdout.flush()
def write(name, n, mode="wb"):
    def f():
        with open(os.path.join(d, name), mode, buffering=0) as fh:
            done = 0
            data = bytes([7]) * n
            while done < n:
                w = fh.write(data[done:])
                if not w:
                    break
                done += w
            fh.flush()
            os.fsync(fh.fileno())
            return done
    return f
def create(name):
    def f():
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
    return f
def short_write(name, n):
    # One write(2): a short count shows as is; nothing written: the errno.
    def f():
        fd = os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            w = os.write(fd, bytes([9]) * n)
            os.fsync(fd)
            return w
        finally:
            os.close(fd)
    return f
step("a 16K", write("a", 16384))
step("b 64K one write", short_write("b", 65536))
step("c 1 byte past the group hard limit", write("c", 1))
step("rm b", lambda: os.unlink(os.path.join(d, "b")))
step("c 8K past the user soft limit", write("c", 8192))
step("d 4K within grace", write("d", 4096))
time.sleep(3)
step("e 4K after grace", write("e", 4096))
step("rewrite a in place", write("a", 4096, "r+b"))
for n in "fghij":
    step("create " + n, create(n))
step("mkdir k", lambda: os.mkdir(os.path.join(d, "k")))
step("symlink l", lambda: os.symlink("a" * 100, os.path.join(d, "l")))
"#;

fn setup_image(tmp: &TempDir, user: &TestUser) -> std::path::PathBuf {
    let img = tmp.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run_ok(
        "mkfs.ext4",
        [
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            "quota,project",
            "-E",
            "quotatype=usrquota:grpquota:prjquota",
            img.to_str().unwrap(),
        ],
    )
    .unwrap();
    let mnt = tmp.join("setup");
    std::fs::create_dir(&mnt).unwrap();
    let m = KernelMount::mount_rw(&img, &mnt, "usrquota,grpquota").unwrap();
    let dir = mnt.join("u");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
    let (u, g) = (user.uid.to_string(), user.gid.to_string());
    let mp = mnt.to_str().unwrap();
    // User: block soft limit 24 KiB (no hard), inode hard limit 8, grace
    // 2 s for blocks and inodes. Group: block hard limit 64 KiB.
    run_ok("setquota", ["-u", &u, "24", "0", "0", "8", mp]).unwrap();
    run_ok("setquota", ["-t", "-u", "2", "2", mp]).unwrap();
    run_ok("setquota", ["-g", &g, "0", "64", "0", "0", mp]).unwrap();
    m.unmount().unwrap();
    fsck_clean(&img).unwrap();
    img
}

/// `debugfs list_quota` for users and groups, the header lines dropped.
fn quotas(img: &Path) -> String {
    let mut out = String::new();
    for t in ["user", "group", "project"] {
        let text = debugfs(img, &format!("list_quota {t}")).unwrap();
        out.push_str(&format!("{t}:\n"));
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        {
            out.push_str(line.trim());
            out.push('\n');
        }
    }
    out
}

fn run_steps(user: &TestUser, dir: &Path) -> String {
    let out = user
        .run("python3", ["-c", STEPS, dir.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "steps as {}: {}",
        user.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn compare(enforce: &str, expect_edquot: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let user = TestUser::get("safemount-quota").unwrap();
    let tmp = TempDir::new("quota").unwrap();
    // The user walks to the mount points.
    run_ok("chmod", ["0755", tmp.path().to_str().unwrap()]).unwrap();
    let base = setup_image(&tmp, &user);
    let (img_s, img_k) = (tmp.join("safemount.img"), tmp.join("kernel.img"));
    std::fs::copy(&base, &img_s).unwrap();
    std::fs::copy(&base, &img_k).unwrap();
    let (mnt_s, mnt_k) = (tmp.join("s"), tmp.join("k"));
    std::fs::create_dir(&mnt_s).unwrap();
    std::fs::create_dir(&mnt_k).unwrap();

    let broker = Broker::start().unwrap();
    let opts = if enforce.is_empty() {
        "rw".to_owned()
    } else {
        format!("rw,{enforce}")
    };
    broker.mount(&img_s, &mnt_s, &opts).unwrap();
    let kernel = KernelMount::mount_rw(&img_k, &mnt_k, enforce).unwrap();
    let on_s = run_steps(&user, &mnt_s.join("u"));
    let on_k = run_steps(&user, &mnt_k.join("u"));
    let unmounted = broker.unmount(&mnt_s);
    kernel.unmount().unwrap();
    unmounted.unwrap();
    assert_eq!(
        on_s, on_k,
        "outcomes differ ({opts}):\nsafemount:\n{on_s}\nkernel:\n{on_k}"
    );
    assert_eq!(
        on_k.contains("EDQUOT"),
        expect_edquot,
        "the kernel's outcomes ({opts}):\n{on_k}"
    );
    eprintln!("[{opts}] outcomes, equal on both sides:\n{on_k}");
    fsck_clean(&img_k).expect("kernel image clean (harness check)");
    if let Err(e) = fsck_clean(&img_s) {
        panic!("safemount's image: {e:#}");
    }
    let (q_s, q_k) = (quotas(&img_s), quotas(&img_k));
    assert_eq!(
        q_s, q_k,
        "list_quota differs:\nsafemount:\n{q_s}\nkernel:\n{q_k}"
    );
    eprintln!("[{opts}] list_quota, equal on both sides:\n{q_k}");
}

/// With usrquota,grpquota: limits enforced alike.
#[test]
fn limits_match_the_kernel() {
    compare("usrquota,grpquota", true);
}

/// Without the options: usage kept, nothing enforced, on both sides.
#[test]
fn usage_only_without_options() {
    compare("", false);
}

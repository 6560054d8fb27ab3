//! Quota limits end to end. This kernel has CONFIG_QUOTA but not
//! CONFIG_QFMT_V2: it mounts a quota-feature ext4 read-only only, so it
//! cannot be the oracle here (the accounting oracle is e2fsck, in the
//! engine tests and the differential test). Limits and grace times are
//! written into the image with the engine (examples/quota_limits.rs; no
//! tool of e2fsprogs writes them) and read back with e2fsprogs' own reader
//! (`debugfs list_quota`); the image is then mounted through safemount
//! with `-o rw,usrquota,grpquota` and an unprivileged user runs steps
//! whose outcomes follow from the kernel's rules (fs/quota/dquot.c:
//! dquot_add_space, dquot_add_inodes, dquot_decr_space): a write cut
//! short at the group's block hard limit and EDQUOT after it, the user's
//! block soft limit crossed (grace starts), usage back under it (grace
//! ends), crossed again and refused once the grace time has run out,
//! creates, mkdir and symlink past the inode hard limit. Then e2fsck finds
//! the image clean (usage exact) and list_quota shows the expected usage.
//! Without the options nothing is enforced (ext4 keeps usage only).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use std::path::Path;
use std::sync::Mutex;

use safemount_tests::broker::Broker;
use safemount_tests::image::{debugfs, fsck_clean};
use safemount_tests::user::TestUser;
use safemount_tests::util::{self, TempDir, require_root, run_ok};

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
    let img = tmp.join("fs.img");
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
    let tool = util::bin("examples/quota_limits").unwrap();
    let tool = tool.to_str().unwrap();
    let (u, g) = (user.uid.to_string(), user.gid.to_string());
    let i = img.to_str().unwrap();
    // User: block soft limit 24 KiB (no hard), inode hard limit 8; grace
    // 2 s. Group: block hard limit 64 KiB.
    run_ok(tool, [i, "user", &u, "24", "0", "0", "8"]).unwrap();
    run_ok(tool, [i, "grace", "user", "2", "2"]).unwrap();
    run_ok(tool, [i, "group", &g, "0", "64", "0", "0"]).unwrap();
    fsck_clean(&img).unwrap();
    // e2fsprogs reads back what the engine wrote.
    assert_eq!(quota_line(&img, "user", user.uid), [0, 24, 0, 0, 0, 8]);
    assert_eq!(quota_line(&img, "group", user.gid), [0, 0, 64, 0, 0, 0]);
    img
}

/// `debugfs list_quota TYPE`'s line for `id`: space (bytes), block soft
/// and hard limits (KiB), inodes, inode soft and hard limits.
fn quota_line(img: &Path, t: &str, id: u32) -> Vec<u64> {
    let text = debugfs(img, &format!("list_quota {t}")).unwrap();
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&id.to_string().as_str()))
        .map(|w| w[1..].iter().map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|| panic!("no {t} quota line for {id}:\n{text}"))
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

/// What the kernel's rules give for STEPS with the limits of
/// `setup_image` (4 KiB blocks; the user's directory holds one block).
const ENFORCED: &str = "\
a 16K 16384
b 64K one write 45056
c 1 byte past the group hard limit EDQUOT
rm b ok
c 8K past the user soft limit 8192
d 4K within grace 4096
e 4K after grace EDQUOT
rewrite a in place 4096
create f ok
create g ok
create h ok
create i EDQUOT
create j EDQUOT
mkdir k EDQUOT
symlink l EDQUOT
";

const NOT_ENFORCED: &str = "\
a 16K 16384
b 64K one write 65536
c 1 byte past the group hard limit 1
rm b ok
c 8K past the user soft limit 8192
d 4K within grace 4096
e 4K after grace 4096
rewrite a in place 4096
create f ok
create g ok
create h ok
create i ok
create j ok
mkdir k ok
symlink l ok
";

fn run(opts: &str, expected: &str, usage: (u64, u64)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !require_root() {
        return;
    }
    let user = TestUser::get("safemount-quota").unwrap();
    let tmp = TempDir::new("quota").unwrap();
    // The user walks to the mount point.
    run_ok("chmod", ["0755", tmp.path().to_str().unwrap()]).unwrap();
    let img = setup_image(&tmp, &user);
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let broker = Broker::start().unwrap();
    broker.mount(&img, &mnt, opts).unwrap();
    let dir = mnt.join("u");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
    let outcomes = run_steps(&user, &dir);
    let log = broker.log_tail(30);
    broker.unmount(&mnt).unwrap();
    assert_eq!(
        outcomes, expected,
        "outcomes with -o {opts}; broker log:\n{log}"
    );
    if let Err(e) = fsck_clean(&img) {
        panic!("safemount's image after -o {opts}: {e:#}");
    }
    let (space, inodes) = usage;
    assert_eq!(
        quota_line(&img, "user", user.uid),
        [space, 24, 0, inodes, 0, 8]
    );
    assert_eq!(
        quota_line(&img, "group", user.gid),
        [space, 0, 64, inodes, 0, 0]
    );
}

/// With usrquota,grpquota: limits enforced as the kernel enforces them.
#[test]
fn limits_enforced_with_options() {
    // u (4K), a (16K), c (8K), d (4K); u a c d e f g h.
    run("rw,usrquota,grpquota", ENFORCED, (32768, 8));
}

/// Without the options: usage kept, nothing enforced.
#[test]
fn usage_only_without_options() {
    // u (4K), a (16K), c (8K), d (4K), e (4K), k (4K), l's 100-byte
    // target (4K, not a fast symlink); u a c d e f g h i j k l.
    run("rw", NOT_ENFORCED, (45056, 12));
}

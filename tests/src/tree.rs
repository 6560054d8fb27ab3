//! Deterministic test trees: every kind of inode, name and attribute that
//! `mkfs.ext4 -d` can copy into an image.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::util::{Rng, run_ok};

pub const MIB: u64 = 1 << 20;

/// What to put in a tree.
#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub seed: u64,
    /// Regular files larger than this are left out (the 64 MiB one is
    /// governed by `huge_file`).
    pub max_file_size: u64,
    /// Add a 64 MiB file.
    pub huge_file: bool,
    /// Entries in `bigdir/` (0: no such directory).
    pub big_dir: usize,
    /// Levels of `deep/`.
    pub depth: usize,
    /// Filesystem block size: long symlinks and big xattr values must fit
    /// in one block.
    pub block_size: u32,
    /// Timestamps before 1970 as well.
    pub wide_times: bool,
    /// Sparse files that end in a hole or hold only zeros. mkfs.ext4 -d
    /// 1.47.0 with inline_data truncates such files at their last data
    /// byte (and e2fsck calls the result clean), so that config leaves
    /// them out.
    pub trailing_holes: bool,
    /// The small but tricky parts (names, devices, xattrs, ACLs, owners,
    /// modes, links). Off for a bare big-directory tree.
    pub everything: bool,
}

impl TreeSpec {
    /// The standard tree: everything but the 64 MiB file and the big
    /// directory, files up to 3 MiB.
    pub fn standard() -> Self {
        Self {
            seed: 0x5afe_3017,
            max_file_size: 4 * MIB,
            huge_file: false,
            big_dir: 0,
            depth: 100,
            block_size: 4096,
            wide_times: true,
            trailing_holes: true,
            everything: true,
        }
    }
}

/// Statistics of what was generated.
#[derive(Clone, Debug, Default)]
pub struct TreeInfo {
    pub files: usize,
    pub dirs: usize,
    pub bytes: u64,
}

/// Sets an extended attribute on `path` without following symlinks.
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and live across the call; the
    // value pointer and length describe one valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        bail!(
            "lsetxattr {} {}: {}",
            path.display(),
            name,
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn lchown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("lchown {}", path.display()))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn write_random(path: &Path, size: u64, rng: &mut Rng) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut left = size;
    let mut buf = vec![0u8; MIB as usize];
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// A sparse file: `len` bytes, random data at each (offset, length).
fn write_sparse(path: &Path, len: u64, pieces: &[(u64, u64)], rng: &mut Rng) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_len(len)?;
    for &(off, n) in pieces {
        let mut buf = vec![0u8; n as usize];
        rng.fill(&mut buf);
        f.seek(SeekFrom::Start(off))?;
        f.write_all(&buf)?;
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()))
}

fn touch(p: &Path, content: &[u8]) -> Result<()> {
    fs::write(p, content).with_context(|| format!("write {}", p.display()))
}

/// Builds the tree described by `spec` under `root` (which must not exist
/// or be empty).
pub fn generate(root: &Path, spec: &TreeSpec) -> Result<TreeInfo> {
    let mut rng = Rng::new(spec.seed);
    let mut info = TreeInfo::default();
    mkdir(root)?;

    // Regular files of the interesting sizes.
    let files = root.join("files");
    mkdir(&files)?;
    let sizes = [
        0,
        1,
        59,
        60,
        61,
        100,
        4095,
        4096,
        4097,
        65536,
        MIB + 3,
        3 * MIB + 17,
    ];
    for s in sizes.iter().copied().filter(|&s| s <= spec.max_file_size) {
        write_random(&files.join(format!("size_{s}")), s, &mut rng)?;
        info.files += 1;
        info.bytes += s;
    }
    if spec.huge_file {
        write_random(&files.join("size_64MiB"), 64 * MIB, &mut rng)?;
        info.files += 1;
        info.bytes += 64 * MIB;
    }

    // Sparse files.
    let sparse = root.join("sparse");
    mkdir(&sparse)?;
    write_sparse(
        &sparse.join("hole_start"),
        MIB + 8192,
        &[(MIB, 8192)],
        &mut rng,
    )?;
    write_sparse(
        &sparse.join("hole_middle"),
        2 * MIB + 65536,
        &[(0, 65536), (2 * MIB, 65536)],
        &mut rng,
    )?;
    let bs = u64::from(spec.block_size);
    // Every other block written: hundreds of extents, so an extent tree
    // with index and leaf blocks.
    let mut pieces: Vec<(u64, u64)> = (0..400).map(|i| (i * 2 * bs, bs)).collect();
    let mut unaligned = vec![(3, 5000), (700_001, 12345)];
    if spec.trailing_holes {
        write_sparse(&sparse.join("hole_end"), 3 * MIB, &[(0, 65536)], &mut rng)?;
        write_sparse(&sparse.join("all_hole"), 5 * MIB, &[], &mut rng)?;
        // Explicit zeros: mkfs may store them as holes; both readers must agree.
        touch(&sparse.join("zeros"), &vec![0u8; 3 * 4096 + 7])?;
        info.files += 3;
    } else {
        pieces.push((800 * bs - 10, 10));
        unaligned.push((1_000_000, 1));
    }
    write_sparse(&sparse.join("unaligned"), 1_000_001, &unaligned, &mut rng)?;
    write_sparse(&sparse.join("many_extents"), 800 * bs, &pieces, &mut rng)?;
    info.files += 4;

    if spec.everything {
        everything(root, spec, &mut rng, &mut info)?;
    }

    // Deep nesting.
    if spec.depth > 0 {
        let mut d = root.join("deep");
        for i in 0..spec.depth {
            d.push(format!("level{i:03}"));
        }
        mkdir(&d)?;
        touch(&d.join("leaf"), b"bottom of the tree\n")?;
        info.dirs += spec.depth;
        info.files += 1;
    }

    // One huge directory.
    if spec.big_dir > 0 {
        let bd = root.join("bigdir");
        mkdir(&bd)?;
        for i in 0..spec.big_dir {
            let pad = (rng.next_u64() % 40) as usize;
            let name = format!("entry-{i:05}-{}", "x".repeat(pad));
            File::create(bd.join(name))?;
        }
        info.files += spec.big_dir;
    }

    set_times(root, spec, &mut rng, &mut info)?;
    Ok(info)
}

fn everything(root: &Path, spec: &TreeSpec, rng: &mut Rng, info: &mut TreeInfo) -> Result<()> {
    // Names.
    let names = root.join("names");
    mkdir(&names)?;
    let long_ascii = "n".repeat(255);
    let long_utf8 = format!("{}x", "é".repeat(127));
    let mut list: Vec<String> = vec![
        long_ascii,
        long_utf8,
        "ünïcødé-名前-🙂".into(),
        "with space".into(),
        "new\nline".into(),
        "-leading-dash".into(),
        "...".into(),
        "back\\slash".into(),
        "!\"#$%&'()*+,-.:;<=>?@[]^_`{|}~".into(),
        ".hidden".into(),
    ];
    for i in 0..300 {
        list.push(format!("many-{i:03}"));
    }
    for (i, n) in list.iter().enumerate() {
        touch(&names.join(n), format!("name {i}\n").as_bytes())?;
        info.files += 1;
    }
    mkdir(&names.join("ünïcødé-dir-名前"))?;
    touch(&names.join("ünïcødé-dir-名前").join("🙂"), b"smile\n")?;

    // Symlinks of every storage kind.
    let links = root.join("links");
    mkdir(&links)?;
    let max_sym = if spec.block_size >= 4096 {
        4000
    } else {
        spec.block_size as usize - 24
    };
    let mut lens: Vec<usize> = [1usize, 10, 59, 60, 61, 200, 1000, 4000]
        .iter()
        .map(|&l| l.min(max_sym))
        .collect();
    lens.dedup();
    for len in lens {
        let mut t = String::new();
        let mut k = 0;
        while t.len() < len {
            t.push(char::from(b'a' + (k % 26) as u8));
            if t.len() % 20 == 19 && t.len() < len {
                t.push('/');
            }
            k += 1;
        }
        t.truncate(len);
        symlink(&t, links.join(format!("sym_{len}")))?;
    }
    symlink("../files/size_1", links.join("to_file"))?;
    symlink("/etc/passwd", links.join("absolute"))?;
    symlink("ünïcødé-🙂", links.join("utf8_target"))?;
    lsetxattr(&links.join("to_file"), "trusted.on_symlink", b"sym xattr")?;
    lchown(&links.join("absolute"), 1234, 5678)?;

    // Hard links.
    touch(&links.join("hard_a"), b"three names, one inode\n")?;
    mkdir(&links.join("sub"))?;
    fs::hard_link(links.join("hard_a"), links.join("hard_b"))?;
    fs::hard_link(links.join("hard_a"), links.join("sub").join("hard_c"))?;
    touch(&links.join("empty_a"), b"")?;
    fs::hard_link(links.join("empty_a"), links.join("empty_b"))?;
    info.files += 2;

    // Special files.
    let dev = root.join("dev");
    mkdir(&dev)?;
    let m = Mode::from_bits_truncate(0o640);
    mknod(&dev.join("chr"), SFlag::S_IFCHR, m, makedev(1, 3))?;
    mknod(&dev.join("blk"), SFlag::S_IFBLK, m, makedev(7, 200))?;
    mknod(&dev.join("bigdev"), SFlag::S_IFCHR, m, makedev(300, 70000))?;
    mknod(
        &dev.join("fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o600),
        0,
    )?;
    drop(std::os::unix::net::UnixListener::bind(dev.join("sock"))?);

    // Extended attributes.
    let x = root.join("xattr");
    mkdir(&x)?;
    touch(&x.join("short"), b"short\n")?;
    lsetxattr(&x.join("short"), "user.a", b"1")?;
    lsetxattr(&x.join("short"), "user.empty", b"")?;
    touch(&x.join("big"), b"big\n")?;
    let big_len = if spec.block_size >= 4096 {
        3000
    } else {
        spec.block_size as usize - 200
    };
    let mut big = vec![0u8; big_len];
    rng.fill(&mut big);
    lsetxattr(&x.join("big"), "user.big", &big)?;
    touch(&x.join("many"), b"many\n")?;
    for i in 0..20 {
        lsetxattr(
            &x.join("many"),
            &format!("user.k{i:02}"),
            format!("value number {i:02}").as_bytes(),
        )?;
    }
    touch(&x.join("trusted"), b"t\n")?;
    lsetxattr(&x.join("trusted"), "trusted.secret", b"root only")?;
    mkdir(&x.join("dir"))?;
    lsetxattr(&x.join("dir"), "user.on_dir", b"dir value")?;
    // Two files sharing one identical xattr block (mkfs may dedupe).
    touch(&x.join("shared1"), b"s1\n")?;
    touch(&x.join("shared2"), b"s2\n")?;
    let mut shared = vec![0u8; big_len / 2];
    rng.fill(&mut shared);
    lsetxattr(&x.join("shared1"), "user.shared", &shared)?;
    lsetxattr(&x.join("shared2"), "user.shared", &shared)?;
    info.files += 6;

    // POSIX ACLs.
    let acl = root.join("acl");
    mkdir(&acl)?;
    touch(&acl.join("file"), b"acl\n")?;
    run_ok(
        "setfacl",
        [
            "-m".as_ref(),
            "u:1234:rw-,g:2345:r--".as_ref(),
            acl.join("file").as_os_str(),
        ],
    )?;
    mkdir(&acl.join("dir"))?;
    run_ok(
        "setfacl",
        [
            "-m".as_ref(),
            "u:1234:rwx".as_ref(),
            acl.join("dir").as_os_str(),
        ],
    )?;
    run_ok(
        "setfacl",
        [
            "-d".as_ref(),
            "-m".as_ref(),
            "u:1234:rwx,g::r-x".as_ref(),
            acl.join("dir").as_os_str(),
        ],
    )?;
    touch(
        &acl.join("dir").join("inherited"),
        b"inherits the default ACL\n",
    )?;
    info.files += 2;

    // Owners.
    let own = root.join("owners");
    mkdir(&own)?;
    for (name, u, g) in [
        ("u1234", 1234, 5678),
        ("nobody", 65534, 65534),
        ("big", 100_000, 100_001),
        ("root_g4242", 0, 4242),
    ] {
        touch(&own.join(name), name.as_bytes())?;
        lchown(&own.join(name), u, g)?;
        info.files += 1;
    }
    mkdir(&own.join("dir"))?;
    lchown(&own.join("dir"), 4321, 4321)?;

    // Modes (after chown, which clears setuid).
    let modes = root.join("modes");
    mkdir(&modes)?;
    for (name, mode) in [
        ("setuid", 0o4755),
        ("setgid", 0o2755),
        ("none", 0o000),
        ("all", 0o7777),
        ("exec", 0o755),
    ] {
        touch(&modes.join(name), name.as_bytes())?;
        lchown(&modes.join(name), 1000, 1000)?;
        chmod(&modes.join(name), mode)?;
        info.files += 1;
    }
    for (name, mode) in [
        ("sticky_dir", 0o1777),
        ("setgid_dir", 0o2775),
        ("private_dir", 0o700),
    ] {
        mkdir(&modes.join(name))?;
        chmod(&modes.join(name), mode)?;
    }

    // Empty directories and an inline-sized one.
    mkdir(&root.join("empty_dir"))?;
    mkdir(&root.join("small_dir"))?;
    touch(&root.join("small_dir").join("a"), b"a")?;
    info.files += 1;
    Ok(())
}

/// Deterministic timestamps on everything, children before parents (so
/// creating entries does not disturb a directory's times afterwards).
fn set_times(root: &Path, spec: &TreeSpec, rng: &mut Rng, info: &mut TreeInfo) -> Result<()> {
    let mut all: Vec<PathBuf> = Vec::new();
    collect(root, &mut all, 0)?;
    // Deepest paths first: children are always longer than their parent.
    all.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    // mkfs -d (e2fsprogs 1.47.0) stores only the low 32 bits of the
    // seconds, so nothing past 2038-01-19; before 1970 works.
    let narrow: [i64; 6] = [
        0,
        1,
        1_000_000_000,
        1_234_567_890,
        1_700_000_000,
        2_147_482_000,
    ];
    let wide: [i64; 3] = [-1_000_000, -2_000_000_000, -1];
    for p in &all {
        let r = rng.next_u64();
        let sec = if spec.wide_times && r.is_multiple_of(5) {
            wide[(r >> 8) as usize % wide.len()]
        } else {
            narrow[(r >> 8) as usize % narrow.len()] + ((r >> 16) % 1000) as i64
        };
        let nsec = ((r >> 32) % 1_000_000_000) as i64;
        let at = TimeSpec::new(sec - 1000, nsec);
        let mt = TimeSpec::new(sec, nsec);
        utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &at,
            &mt,
            UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("utimensat {}", p.display()))?;
        if p.is_dir() {
            info.dirs += 1;
        }
    }
    Ok(())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 1000 {
        bail!("tree too deep at {}", dir.display());
    }
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            collect(&p, out, depth + 1)?;
        }
        out.push(p);
    }
    Ok(())
}

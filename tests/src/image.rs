//! Images made with `mkfs.ext4 -d` over a matrix of on-disk formats, each
//! checked clean by `e2fsck -fn`.

use std::fs::File;
use std::path::Path;

use anyhow::{Result, bail};

use crate::util::{run, run_ok};

/// One mkfs configuration of the feature matrix.
#[derive(Clone, Copy, Debug)]
pub struct FsConfig {
    pub name: &'static str,
    pub mkfs_args: &'static [&'static str],
    pub block_size: u32,
    /// Inodes of 128 bytes: no nanoseconds, no times past 2038.
    pub small_inodes: bool,
}

pub const MATRIX: &[FsConfig] = &[
    FsConfig {
        name: "defaults",
        mkfs_args: &[],
        block_size: 4096,
        small_inodes: false,
    },
    FsConfig {
        name: "ext2",
        mkfs_args: &["-t", "ext2"],
        block_size: 4096,
        small_inodes: false,
    },
    FsConfig {
        name: "ext3",
        mkfs_args: &["-t", "ext3"],
        block_size: 4096,
        small_inodes: false,
    },
    FsConfig {
        name: "no_metadata_csum",
        mkfs_args: &["-O", "^metadata_csum"],
        block_size: 4096,
        small_inodes: false,
    },
    FsConfig {
        name: "inline_data",
        mkfs_args: &["-O", "inline_data"],
        block_size: 4096,
        small_inodes: false,
    },
    FsConfig {
        name: "block1024",
        mkfs_args: &["-b", "1024"],
        block_size: 1024,
        small_inodes: false,
    },
    FsConfig {
        name: "inode128",
        mkfs_args: &["-I", "128"],
        block_size: 4096,
        small_inodes: true,
    },
    FsConfig {
        name: "bigalloc",
        mkfs_args: &["-O", "bigalloc", "-C", "16384"],
        block_size: 4096,
        small_inodes: false,
    },
    FsConfig {
        name: "meta_bg",
        mkfs_args: &["-O", "meta_bg,^resize_inode"],
        block_size: 4096,
        small_inodes: false,
    },
    FsConfig {
        name: "no_64bit",
        mkfs_args: &["-O", "^64bit"],
        block_size: 4096,
        small_inodes: false,
    },
];

pub fn config(name: &str) -> Option<&'static FsConfig> {
    MATRIX.iter().find(|c| c.name == name)
}

/// Makes `img` (`size` bytes) from `src` with the given config, plus any
/// `extra` mkfs arguments. With `index_dirs`, `e2fsck -fyD` then turns
/// large directories into htrees (mkfs -d writes linear directories).
/// Finally asserts `e2fsck -fn` finds the image clean.
pub fn make_image(
    src: &Path,
    img: &Path,
    cfg: &FsConfig,
    size: u64,
    extra: &[&str],
    index_dirs: bool,
) -> Result<()> {
    let f = File::create(img)?;
    f.set_len(size)?;
    drop(f);
    let mut args: Vec<std::ffi::OsString> = vec!["-q".into(), "-F".into()];
    args.extend(cfg.mkfs_args.iter().map(Into::into));
    args.extend(extra.iter().map(Into::into));
    args.push("-d".into());
    args.push(src.into());
    args.push(img.into());
    let out = run_ok("mkfs.ext4", &args)?;
    let warn = String::from_utf8_lossy(&out.stderr);
    let warn = warn.trim();
    if !warn.is_empty() && !warn.contains("128-byte inodes cannot handle dates beyond 2038") {
        bail!("mkfs.ext4 {} warned: {warn}", cfg.name);
    }
    if index_dirs {
        let out = run("e2fsck", ["-fyD".as_ref(), img.as_os_str()])?;
        // 0: clean, 1: modified (the indexing we asked for).
        if !matches!(out.status.code(), Some(0 | 1)) {
            bail!(
                "e2fsck -fyD {} ({}): {}",
                cfg.name,
                out.status,
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    fsck_clean(img)
}

/// `e2fsck -fn` must exit 0.
pub fn fsck_clean(img: &Path) -> Result<()> {
    let out = run("e2fsck", ["-fn".as_ref(), img.as_os_str()])?;
    if out.status.code() != Some(0) {
        bail!(
            "e2fsck -fn {} not clean ({}): {}{}",
            img.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `debugfs -R CMD IMG` stdout (read-only open).
pub fn debugfs(img: &Path, cmd: &str) -> Result<String> {
    let out = run_ok("debugfs", ["-R".as_ref(), cmd.as_ref(), img.as_os_str()])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `debugfs -w -R CMD IMG` (writes the image).
pub fn debugfs_w(img: &Path, cmd: &str) -> Result<String> {
    let out = run_ok(
        "debugfs",
        ["-w".as_ref(), "-R".as_ref(), cmd.as_ref(), img.as_os_str()],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Makes `img` the way a user's disk is made: an empty mkfs, then the
/// kernel's ext4 copies `src` in (`cp -a`), so directories grow into
/// htrees the kernel's way. Much faster than `mkfs -d` for huge
/// directories. Checked clean by `e2fsck -fn`.
pub fn make_image_via_kernel(
    src: &Path,
    img: &Path,
    cfg: &FsConfig,
    size: u64,
    mnt: &Path,
) -> Result<()> {
    let f = File::create(img)?;
    f.set_len(size)?;
    drop(f);
    let mut args: Vec<std::ffi::OsString> = vec!["-q".into(), "-F".into()];
    args.extend(cfg.mkfs_args.iter().map(Into::into));
    args.push(img.into());
    run_ok("mkfs.ext4", &args)?;
    std::fs::create_dir_all(mnt)?;
    run_ok(
        "mount",
        [
            "-t".as_ref(),
            "ext4".as_ref(),
            "-o".as_ref(),
            "loop".as_ref(),
            img.as_os_str(),
            mnt.as_os_str(),
        ],
    )?;
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    let copied = run_ok("cp", ["-a".as_ref(), from.as_os_str(), mnt.as_os_str()]);
    let unmounted = run_ok("umount", [mnt]);
    copied?;
    unmounted?;
    fsck_clean(img)
}

/// A small valid ext4 image (`dir/tiny.img`, 32 MiB) holding a few files:
/// enough for tests that care about processes and mounts, not contents.
pub fn tiny_image(dir: &Path) -> Result<std::path::PathBuf> {
    let src = dir.join("tiny-src");
    std::fs::create_dir_all(src.join("sub"))?;
    std::fs::write(src.join("hello.txt"), b"hello from a tiny image\n")?;
    std::fs::write(src.join("sub").join("data.bin"), vec![0x5au8; 100_000])?;
    let img = dir.join("tiny.img");
    let cfg = config("defaults").ok_or_else(|| anyhow::anyhow!("no defaults config"))?;
    make_image(
        &src,
        &img,
        cfg,
        32 << 20,
        &["-b", "4096", "-I", "256"],
        false,
    )?;
    Ok(img)
}

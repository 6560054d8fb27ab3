//! Bigalloc read-write against its oracles: e2fsck -fn (which checks the
//! cluster bitmaps and free cluster counts, i_blocks in whole clusters,
//! and that a logical cluster maps to one physical cluster at the same
//! offset), debugfs (where blocks went) and the kernel (what the files
//! hold and what stat reports).

#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::path::Path;

use super::file::write::tests::open_rw;
use super::testutil::*;
use super::types::XattrFlags;
use super::{Ext4, FallocMode, Ino, ROOT_INO};

/// (name, mkfs options): 4 blocks per cluster with 4 KiB and with 1 KiB
/// blocks, and 16 with 1 KiB blocks; and small groups (4 of 1024
/// clusters, the later ones BLOCK_UNINIT: their bitmaps built in clusters).
const CONFIGS: &[(&str, &[&str])] = &[
    ("4k-16k", &["-b", "4096", "-O", "bigalloc", "-C", "16384"]),
    (
        "4k-16k-groups",
        &["-b", "4096", "-O", "bigalloc", "-C", "16384", "-g", "4096"],
    ),
    ("1k-4k", &["-b", "1024", "-O", "bigalloc", "-C", "4096"]),
    ("1k-16k", &["-b", "1024", "-O", "bigalloc", "-C", "16384"]),
];

const PUNCH: FallocMode = FallocMode {
    keep_size: true,
    punch_hole: true,
    zero_range: false,
};

fn free_blocks(fs: &Ext4) -> u64 {
    fs.rw.live_sb().sb.s_free_blocks_count
}

/// i_blocks (512-byte units) of `n` clusters.
fn clusters(fs: &Ext4, n: u64) -> u64 {
    n * fs.cluster_sectors()
}

fn blocks_of(fs: &Ext4, ino: Ino) -> u64 {
    fs.getattr(ino).unwrap().blocks
}

/// unlink (or rmdir), then the last close: the inode and its clusters go.
fn remove(fs: &Ext4, parent: Ino, name: &[u8], dir: bool) {
    let gone = if dir {
        fs.rmdir(parent, name)
    } else {
        fs.unlink(parent, name)
    };
    if let Some(ino) = gone.unwrap() {
        fs.release_inode(ino).unwrap();
    }
}

/// The allocator hands out whole clusters, aligned, counted in clusters,
/// and frees whole clusters; e2fsck agrees with the counters after.
#[test]
fn allocator_works_in_clusters() {
    if !have_mkfs() {
        return;
    }
    for (name, args) in CONFIGS {
        let im = RwImage::new("ba-alloc", args);
        let fs = im.open();
        let ratio = fs.clusters().ratio();
        assert!(ratio > 1, "{name}");
        let free0 = free_blocks(&fs);
        assert_eq!(free0.to_string(), dumpe2fs_field(&im.img, "Free blocks"));
        let mut txn = fs.begin().unwrap();
        let (a, n) = txn.alloc_blocks(0, 1, false).unwrap();
        assert_eq!((a % ratio, n), (0, 1), "{name}: one block, cluster-aligned");
        assert!(
            txn.block_in_use(a + ratio - 1).unwrap(),
            "{name}: whole cluster taken"
        );
        let (b, m) = txn.alloc_blocks(a, 10, false).unwrap();
        assert_eq!((b % ratio, m), (0, 10), "{name}");
        assert!(b >= a + ratio || b + 12 <= a, "{name}: {a} and {b} overlap");
        txn.commit().unwrap();
        // 1 + ceil(10 / ratio) clusters.
        let used = (1 + 10u64.div_ceil(ratio)) * ratio;
        assert_eq!(free_blocks(&fs), free0 - used, "{name}");
        let st = fs.statfs().unwrap();
        let mut txn = fs.begin().unwrap();
        // Freeing one block of a cluster frees that cluster.
        txn.free_blocks(a + 1, 1).unwrap();
        txn.free_blocks(b, 10).unwrap();
        // The second cluster of `b` is free now: freeing it again is
        // corruption.
        assert!(
            txn.free_blocks(b + ratio, 1).is_err(),
            "{name}: double free"
        );
        drop(txn);
        let mut txn = fs.begin().unwrap();
        txn.free_blocks(a, 1).unwrap();
        txn.free_blocks(b, 10).unwrap();
        txn.commit().unwrap();
        assert_eq!(free_blocks(&fs), free0, "{name}");
        assert_eq!(
            fs.statfs().unwrap().bfree,
            st.bfree + used,
            "{name}: statfs"
        );
        fs.shutdown().unwrap();
        let img = im.save();
        assert_fsck_clean(img, &format!("{name}: cluster alloc/free"));
        assert_eq!(
            dumpe2fs_field(img, "Free blocks"),
            free0.to_string(),
            "{name}"
        );
    }
}

/// A file model: name -> (inode, expected bytes).
struct Files(BTreeMap<&'static str, (Ino, Vec<u8>)>);

impl Files {
    fn create(&mut self, fs: &Ext4, name: &'static str) -> Ino {
        let ino = fs
            .create(ROOT_INO, name.as_bytes(), 0o100644, 0, 0, 0, 0)
            .unwrap()
            .ino;
        self.0.insert(name, (ino, Vec::new()));
        ino
    }
    fn write(&mut self, fs: &Ext4, name: &str, off: u64, data: &[u8]) {
        let (ino, m) = self.0.get_mut(name).unwrap();
        assert_eq!(fs.write(*ino, off, data).unwrap(), data.len());
        let end = off as usize + data.len();
        if m.len() < end {
            m.resize(end, 0);
        }
        m[off as usize..end].copy_from_slice(data);
    }
    fn punch(&mut self, fs: &Ext4, name: &str, off: u64, len: u64) {
        let (ino, m) = self.0.get_mut(name).unwrap();
        fs.fallocate(*ino, off, len, PUNCH).unwrap();
        let e = ((off + len) as usize).min(m.len());
        if (off as usize) < e {
            m[off as usize..e].fill(0);
        }
    }
    fn truncate(&mut self, fs: &Ext4, name: &str, size: u64) {
        let (ino, m) = self.0.get_mut(name).unwrap();
        fs.setattr(
            *ino,
            super::types::SetAttr {
                size: Some(size),
                ..Default::default()
            },
        )
        .unwrap();
        m.resize(size as usize, 0);
    }
    fn ino(&self, name: &str) -> Ino {
        self.0[name].0
    }
}

/// Sparse writes into one cluster, writes across clusters, punch and
/// truncate inside clusters, fallocate from the middle of a cluster,
/// deep extent trees, big directories, xattr blocks (shared and not),
/// slow and fast symlinks, unlink and rmdir: i_blocks in whole clusters
/// step by step, blocks of one logical cluster in one physical cluster,
/// freed clusters back in the free count; then e2fsck -fn clean, and the
/// kernel reads the same bytes and the same st_blocks.
#[test]
fn file_and_dir_ops_in_clusters() {
    if !have_mkfs() {
        return;
    }
    for (name, args) in CONFIGS {
        eprintln!("config {name}");
        let im = RwImage::new("ba-ops", args);
        let fs = im.open();
        let bs = u64::from(fs.block_size());
        let ratio = fs.clusters().ratio();
        let mut f = Files(BTreeMap::new());
        let free0 = free_blocks(&fs);

        // Blocks 1, then 3, then 0 of the first cluster: one cluster.
        let s = f.create(&fs, "sparse");
        f.write(&fs, "sparse", bs, &pattern(bs as usize, 1));
        assert_eq!(blocks_of(&fs, s), clusters(&fs, 1), "{name}");
        assert_eq!(free_blocks(&fs), free0 - ratio, "{name}");
        f.write(&fs, "sparse", 3 * bs + 7, &pattern(10, 2));
        f.write(&fs, "sparse", 0, &pattern(100, 3));
        assert_eq!(blocks_of(&fs, s), clusters(&fs, 1), "{name}: same cluster");
        // A write spanning the rest of cluster 0 and two more clusters,
        // ending inside the third: three clusters in all.
        f.write(
            &fs,
            "sparse",
            2 * bs,
            &pattern((2 * ratio as usize + 1) * bs as usize, 4),
        );
        assert_eq!(blocks_of(&fs, s), clusters(&fs, 3), "{name}");
        // Punch one block: nothing freed; punch the rest of the cluster's
        // blocks: the cluster goes.
        f.punch(&fs, "sparse", bs, bs);
        assert_eq!(blocks_of(&fs, s), clusters(&fs, 3), "{name}");
        f.punch(&fs, "sparse", 0, bs);
        f.punch(&fs, "sparse", 2 * bs, (ratio - 2) * bs);
        assert_eq!(
            blocks_of(&fs, s),
            clusters(&fs, 2),
            "{name}: punched cluster freed"
        );
        // A punch across a cluster boundary, leaving a block on each side.
        f.punch(&fs, "sparse", ratio * bs + bs, ratio * bs);
        assert_eq!(blocks_of(&fs, s), clusters(&fs, 2), "{name}");
        // Refill the punched blocks: back into the clusters they left.
        f.write(&fs, "sparse", ratio * bs + bs, &pattern(bs as usize, 5));
        assert_eq!(blocks_of(&fs, s), clusters(&fs, 2), "{name}");

        // Truncate inside a cluster keeps it; at its start frees it.
        let t = f.create(&fs, "trunc");
        f.write(
            &fs,
            "trunc",
            0,
            &pattern((2 * ratio as usize + 2) * bs as usize, 6),
        );
        assert_eq!(blocks_of(&fs, t), clusters(&fs, 3), "{name}");
        f.truncate(&fs, "trunc", (ratio + 1) * bs + 100);
        assert_eq!(blocks_of(&fs, t), clusters(&fs, 2), "{name}");
        f.truncate(&fs, "trunc", ratio * bs + 1);
        assert_eq!(blocks_of(&fs, t), clusters(&fs, 2), "{name}");
        f.truncate(&fs, "trunc", ratio * bs);
        assert_eq!(blocks_of(&fs, t), clusters(&fs, 1), "{name}");
        f.write(&fs, "trunc", 5 * ratio * bs, b"grow again");

        // fallocate from the middle of a cluster, then write in front of
        // it inside the same cluster.
        let fa = f.create(&fs, "falloc");
        fs.fallocate(fa, (ratio + 2) * bs, 3 * ratio * bs, FallocMode::default())
            .unwrap();
        f.0.get_mut("falloc").unwrap().1 = vec![0; ((4 * ratio + 2) * bs) as usize];
        assert_eq!(blocks_of(&fs, fa), clusters(&fs, 4), "{name}");
        f.write(&fs, "falloc", ratio * bs, &pattern(bs as usize, 7));
        assert_eq!(
            blocks_of(&fs, fa),
            clusters(&fs, 4),
            "{name}: implied cluster"
        );

        // One block in every other cluster: many extents, tree blocks of a
        // cluster each; then half of it truncated away.
        let d = f.create(&fs, "deep");
        // With 1 KiB blocks, past 4 full leaves: the root grows while a leaf
        // splits (two tree blocks in one go, a cluster each).
        let n = if bs == 1024 { 500 } else { 700 };
        for i in 0..n {
            f.write(
                &fs,
                "deep",
                2 * i * ratio * bs + (i % ratio) * bs,
                &pattern(9, i),
            );
        }
        let tree = blocks_of(&fs, d) - clusters(&fs, n);
        assert!(
            tree >= clusters(&fs, 2),
            "{name}: a tree of leaves ({tree})"
        );
        assert_eq!(
            tree % clusters(&fs, 1),
            0,
            "{name}: tree blocks in clusters"
        );
        f.truncate(&fs, "deep", n * ratio * bs + 5);

        // A directory with many entries (several blocks, an htree), half
        // of them removed; another emptied and removed.
        let dir = fs.mkdir(ROOT_INO, b"big", 0o755, 0, 0, 0).unwrap().ino;
        let gone = fs.mkdir(ROOT_INO, b"gone", 0o755, 0, 0, 0).unwrap().ino;
        for i in 0..600 {
            let nm = format!("entry-with-a-longish-name-{i:04}");
            fs.create(dir, nm.as_bytes(), 0o100644, 0, 0, 0, 0).unwrap();
            if i < 150 {
                fs.create(gone, nm.as_bytes(), 0o100644, 0, 0, 0, 0)
                    .unwrap();
            }
        }
        let dblocks = blocks_of(&fs, dir);
        assert!(dblocks > clusters(&fs, 1), "{name}");
        assert_eq!(dblocks % clusters(&fs, 1), 0, "{name}");
        for i in (0..600).step_by(2) {
            remove(
                &fs,
                dir,
                format!("entry-with-a-longish-name-{i:04}").as_bytes(),
                false,
            );
        }
        for i in 0..150 {
            remove(
                &fs,
                gone,
                format!("entry-with-a-longish-name-{i:04}").as_bytes(),
                false,
            );
        }
        remove(&fs, ROOT_INO, b"gone", true);

        // Xattr blocks: one shared by two files, one alone; symlinks fast
        // (with an xattr block: its i_blocks is one cluster) and slow.
        let x1 = f.create(&fs, "x1");
        let x2 = f.create(&fs, "x2");
        let big = vec![b'v'; 700];
        for x in [x1, x2] {
            fs.setxattr(x, b"user.big", &big, XattrFlags::default())
                .unwrap();
        }
        assert_eq!(blocks_of(&fs, x1), clusters(&fs, 1), "{name}: xattr block");
        let fast = fs.symlink(ROOT_INO, b"fast", b"sparse", 0, 0).unwrap().ino;
        fs.setxattr(fast, b"user.other", &[b'w'; 600], XattrFlags::default())
            .unwrap();
        assert_eq!(blocks_of(&fs, fast), clusters(&fs, 1), "{name}");
        let target = vec![b't'; 300];
        let slow = fs.symlink(ROOT_INO, b"slow", &target, 0, 0).unwrap().ino;
        assert_eq!(blocks_of(&fs, slow), clusters(&fs, 1), "{name}");
        assert_eq!(fs.readlink(slow).unwrap(), target);

        // Unlinks: a file with partial clusters, the fast symlink with
        // its xattr block, one of the sharers.
        let before = free_blocks(&fs);
        remove(&fs, ROOT_INO, b"sparse", false);
        f.0.remove("sparse");
        assert_eq!(
            free_blocks(&fs),
            before + 2 * ratio,
            "{name}: unlink frees clusters"
        );
        remove(&fs, ROOT_INO, b"fast", false);
        remove(&fs, ROOT_INO, b"x2", false);
        f.0.remove("x2");
        assert_eq!(
            free_blocks(&fs),
            before + 3 * ratio,
            "{name}: shared block stays"
        );

        // Engine reads back, then e2fsck and the kernel.
        let mut engine_blocks = BTreeMap::new();
        for (nm, (ino, m)) in &f.0 {
            let mut buf = vec![0u8; m.len()];
            let mut done = 0;
            while done < m.len() {
                let k = fs.read(*ino, done as u64, &mut buf[done..]).unwrap();
                assert!(k > 0);
                done += k;
            }
            assert!(buf == *m, "{name}: engine reads {nm} back");
            engine_blocks.insert(*nm, blocks_of(&fs, *ino));
        }
        let _ = (f.ino("x1"), x1);
        fs.shutdown().unwrap();
        drop(fs);
        let img = im.save();
        assert_fsck_clean(img, &format!("{name}: file and directory operations"));
        // Blocks of one logical cluster sit in one physical cluster.
        // (bmap adds "(uninit)" after an unwritten block.)
        let pblk = |l: u64| -> u64 {
            let out = debugfs_out(img, &format!("bmap /falloc {l}"));
            out.split_whitespace().next().unwrap().parse().unwrap()
        };
        let (b1, b2) = (pblk(ratio), pblk(ratio + 2));
        assert_eq!(
            (b1 / ratio, b1 % ratio, b2 % ratio),
            (b2 / ratio, 0, 2),
            "{name}"
        );
        kernel_agrees(img, name, &f, &engine_blocks);
    }
}

/// The kernel reads every file as the model has it, with the st_blocks
/// the engine reported.
fn kernel_agrees(img: &Path, name: &str, f: &Files, blocks: &BTreeMap<&str, u64>) {
    use std::os::unix::fs::MetadataExt;
    let Some(seen) = with_kernel_mount(img, |mnt: &Path| {
        f.0.keys()
            .map(|nm| {
                let p = mnt.join(nm);
                (
                    *nm,
                    (
                        std::fs::read(&p).unwrap(),
                        std::fs::metadata(&p).unwrap().blocks(),
                    ),
                )
            })
            .collect::<BTreeMap<_, _>>()
    }) else {
        return;
    };
    for (nm, (data, st_blocks)) in seen {
        assert!(
            data == f.0[nm].1,
            "{name}: the kernel reads {nm} differently"
        );
        assert_eq!(st_blocks, blocks[nm], "{name}: st_blocks of {nm}");
    }
}

/// A full filesystem: the reserves are counted in clusters (the kernel's
/// ext4_has_free_clusters), writes stop short cleanly, and after the
/// file is removed every cluster is free again.
#[test]
fn enospc_in_clusters() {
    if !have_mkfs() {
        return;
    }
    for (name, args) in CONFIGS {
        let mut args = args.to_vec();
        args.extend(["-m", "5"]);
        let im = RwImage::new("ba-enospc", &args);
        let fs = im.open();
        let c = fs.clusters();
        let free0 = free_blocks(&fs);
        let mut txn = fs.begin().unwrap();
        let fill = |txn: &mut super::Txn<'_>, reserved_ok: bool| {
            let mut got = 0u64;
            loop {
                match txn.alloc_blocks(0, 4096, reserved_ok) {
                    Ok((b, n)) => {
                        assert_eq!(b % c.ratio(), 0, "{name}");
                        got += c.count(u64::from(n));
                    }
                    Err(super::Error::NoSpace) => return got,
                    Err(e) => panic!("{name}: {e}"),
                }
            }
        };
        let user = fill(&mut txn, false);
        let root = fill(&mut txn, true);
        assert_eq!(root, c.of(fs.sb().s_r_blocks_count), "{name}: root reserve");
        txn.use_reserved_pool();
        let pool = fill(&mut txn, true);
        assert_eq!(
            pool,
            (c.of(fs.sb().s_blocks_count) / 50).min(4096),
            "{name}"
        );
        assert_eq!(
            (user + root + pool) * c.ratio(),
            free0,
            "{name}: all handed out"
        );
        drop(txn);
        // The write path: a file grows until the space runs out.
        let ino = fs
            .create(ROOT_INO, b"fill", 0o100644, 0, 0, 0, 0)
            .unwrap()
            .ino;
        let chunk = pattern(1 << 20, 3);
        let mut off = 0u64;
        loop {
            match fs.write(ino, off, &chunk) {
                Ok(n) if n == chunk.len() => off += n as u64,
                Ok(n) => {
                    off += n as u64;
                    break;
                }
                Err(super::Error::NoSpace) => break,
                Err(e) => panic!("{name}: {e}"),
            }
        }
        assert!(off > 0, "{name}");
        // Odd-sized tail writes into the last partial cluster still fit.
        let _ = fs.write(ino, off, b"tail");
        fs.shutdown().unwrap();
        drop(fs);
        assert_fsck_clean(im.save(), &format!("{name}: full filesystem"));
        let fs = im.open();
        remove(&fs, ROOT_INO, b"fill", false);
        assert_eq!(free_blocks(&fs), free0, "{name}: all free again");
        fs.shutdown().unwrap();
        drop(fs);
        assert_fsck_clean(im.save(), &format!("{name}: after removing the fill"));
    }
}

/// A hostile mapping: a file whose block 0 sits at offset 1 of its
/// cluster. Writing another block of that logical cluster, or truncating
/// the block away, is corruption named by inode (never a panic, never a
/// guess at which cluster to use or free).
#[test]
fn misaligned_mapping_is_corrupt() {
    if !have_mkfs() {
        return;
    }
    let (name, args) = CONFIGS[0];
    let im = RwImage::new("ba-hostile", args);
    let fs = im.open();
    let ino = fs.create(ROOT_INO, b"f", 0o100644, 0, 0, 0, 0).unwrap().ino;
    fs.write(ino, 0, b"block zero").unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    let img = im.save().to_owned();
    let p = bmap(&img, "/f", 0);
    // i_block words: the 12-byte header, then the extent (ee_block,
    // ee_len + ee_start_hi, ee_start_lo).
    debugfs(&img, &format!("sif /f block[5] {}", p + 1));
    let fs = open_rw(&img);
    let e = fs.write(ino, 4096 * 2, b"same cluster").unwrap_err();
    assert!(
        matches!(&e, super::Error::Corrupt { what, .. } if what.contains("cluster")),
        "{name}: {e}"
    );
    drop(fs);
    let fs = open_rw(&img);
    let e = fs
        .setattr(
            ino,
            super::types::SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&e, super::Error::Corrupt { what, .. } if what.contains("cluster")),
        "{name}: {e}"
    );
}

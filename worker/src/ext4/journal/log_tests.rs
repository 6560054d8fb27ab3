//! Log writer tests against real oracles. A test image is made by
//! mkfs.ext4; a chain of states A0, A1, ... An is made from it by
//! e2fsprogs itself (`debugfs -w` scripts: mkdir, write, symlink, rm,
//! set_inode_field, set_super_value volume_name), so every state is one
//! e2fsck and the kernel accept. Transaction k logs exactly the blocks
//! that differ between A(k-1) and Ak. The writer commits them on a copy of
//! A0 without writing anything in place (except where a test checkpoints),
//! needs_recovery is set, and the result is replayed by e2fsck, by the
//! kernel (loop mount) and by our replay: each must give exactly some Ak
//! on every block any transaction touched (the superblock compared by its
//! volume name, which every step changes), never a mix.
//!
//! They need root, loop devices and e2fsprogs, and skip with a message
//! otherwise. `SAFEMOUNT_LONG_CRASH=1` crashes at every operation of the
//! power-loss runs instead of a sample.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::log::Log;
use super::{Journal, recover_at_open};
use crate::ext4::OpenOptions;
use crate::ext4::ondisk::superblock::{self as sbf, Superblock};
use crate::ext4::testutil::{
    Scratch, can_loop_mount, fsck_clean, loop_mounted, open_on, pattern, run_output,
};
use crate::ext4::{Ext4, ondisk::journal::JBD2_MAGIC_NUMBER};
use crate::io::{BlockDevice, MemDevice};
use crate::testdev::PowerLoss;

/// A chain of e2fsprogs-made states and what distinguishes them.
struct Fixture {
    sc: Scratch,
    bs: u64,
    states: Vec<Vec<u8>>,
    /// Transaction k+1: the blocks that differ between states k and k+1.
    diffs: Vec<Vec<(u64, Vec<u8>)>>,
    /// Blocks compared: every block a transaction logs, except superblock
    /// copies (their timestamps and flags are the replayer's).
    compared: BTreeSet<u64>,
    /// States after an `e2fsck -fy` of their own (see `which_state_fsck`).
    fscked: std::sync::Mutex<std::collections::BTreeMap<usize, Vec<u8>>>,
}

fn mkfs(path: &Path, args: &[&str], size: &str) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .args(args)
        .arg(path)
        .arg(size)
        .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs {args:?}: {out:?}");
}

/// Blocks holding a superblock copy (primary or backup) or a backup group
/// descriptor table, from dumpe2fs.
fn sb_copies(img: &Path, bs: u64) -> BTreeSet<u64> {
    let out = run_output("dumpe2fs", &[img.to_str().unwrap()]).stdout;
    let text = String::from_utf8_lossy(&out);
    let mut set = BTreeSet::new();
    set.insert(1024 / bs);
    for line in text.lines() {
        let l = line.trim();
        let Some(rest) = l.strip_prefix("Backup superblock at ") else {
            continue;
        };
        let nums: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        // "Backup superblock at S, Group descriptors at A-B"
        if let Some(&s) = nums.first() {
            set.insert(s);
        }
        if let (Some(&a), Some(&b)) = (nums.get(1), nums.get(2)) {
            set.extend(a..=b);
        }
    }
    set
}

fn block(img: &[u8], bs: u64, b: u64) -> &[u8] {
    &img[(b * bs) as usize..((b + 1) * bs) as usize]
}

/// mkfs `args`, then the states after each of `steps` (debugfs -w scripts).
fn fixture(tag: &str, args: &[&str], size: &str, steps: &[String]) -> Fixture {
    let sc = Scratch::new(tag);
    let img = sc.path().join("a.img");
    mkfs(&img, args, size);
    let a0 = std::fs::read(&img).unwrap();
    let sb = Superblock::parse(&a0[1024..2048], a0.len() as u64).unwrap();
    let bs = u64::from(sb.block_size());
    let copies = sb_copies(&img, bs);
    let mut states = vec![a0];
    for (k, script) in steps.iter().enumerate() {
        let f = sc.path().join(format!("step{k}.cmd"));
        std::fs::write(&f, script).unwrap();
        let out = run_output(
            "debugfs",
            &["-w", "-f", f.to_str().unwrap(), img.to_str().unwrap()],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        // debugfs prints each command on stderr; real failures say so.
        assert!(
            !err.contains("rror") && !err.contains("not found"),
            "step {k}: {err}"
        );
        states.push(std::fs::read(&img).unwrap());
    }
    let nblocks = states[0].len() as u64 / bs;
    let mut diffs = Vec::new();
    let mut compared = BTreeSet::new();
    for w in states.windows(2) {
        let d: Vec<(u64, Vec<u8>)> = (0..nblocks)
            .filter(|&b| block(&w[0], bs, b) != block(&w[1], bs, b))
            .map(|b| (b, block(&w[1], bs, b).to_vec()))
            .collect();
        compared.extend(d.iter().map(|(b, _)| *b).filter(|b| !copies.contains(b)));
        diffs.push(d);
    }
    // A mounted filesystem's superblock says needs_recovery, and so does
    // every logged copy of it (else a checkpoint would clear the flag).
    let (sb_block, sb_off) = (1024 / bs, (1024 % bs) as usize);
    for (b, data) in diffs.iter_mut().flatten() {
        if *b == sb_block {
            let raw = &mut data[sb_off..sb_off + 1024];
            let mut sb = Superblock::parse(raw, states[0].len() as u64).unwrap();
            sb.s_feature_incompat |= sbf::INCOMPAT_RECOVER;
            sb.write(raw);
        }
    }
    Fixture {
        sc,
        bs,
        states,
        diffs,
        compared,
        fscked: Default::default(),
    }
}

fn volume_name(img: &[u8]) -> [u8; 16] {
    Superblock::parse(&img[1024..2048], img.len() as u64)
        .unwrap()
        .s_volume_name
}

impl Fixture {
    /// The state `img` is in, or why it is in none.
    fn which_state(&self, img: &[u8]) -> Result<usize, String> {
        self.which_state_as(img, false)
    }

    /// Like [`Fixture::which_state`] for an image e2fsck replayed: e2fsck
    /// -fy also refreshes bg_itable_unused (silently, even on a clean
    /// image), so the states are compared after an `e2fsck -fy` of their
    /// own.
    fn which_state_fsck(&self, img: &[u8]) -> Result<usize, String> {
        self.which_state_as(img, true)
    }

    fn fsck_state(&self, k: usize) -> Vec<u8> {
        let mut cache = self.fscked.lock().unwrap();
        cache
            .entry(k)
            .or_insert_with(|| {
                let p = self.path("norm.img");
                std::fs::write(&p, &self.states[k]).unwrap();
                let out = Command::new("e2fsck")
                    .args(["-fy", p.to_str().unwrap()])
                    .output()
                    .unwrap();
                assert!(out.status.code().is_some_and(|c| c <= 1), "{out:?}");
                std::fs::read(&p).unwrap()
            })
            .clone()
    }

    fn which_state_as(&self, img: &[u8], fscked: bool) -> Result<usize, String> {
        let name = volume_name(img);
        let mut why = String::new();
        for k in (0..self.states.len()).rev() {
            if volume_name(&self.states[k]) != name {
                continue;
            }
            let fs_state;
            let s = if fscked {
                fs_state = self.fsck_state(k);
                &fs_state
            } else {
                &self.states[k]
            };
            match self
                .compared
                .iter()
                .find(|&&b| block(img, self.bs, b) != block(s, self.bs, b))
            {
                None => return Ok(k),
                Some(b) => why = format!("volume name of state {k} but block {b} differs"),
            }
        }
        Err(format!(
            "matches no state (volume name {:?}) {why}",
            String::from_utf8_lossy(&name)
        ))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.sc.path().join(name)
    }

    fn blocks(&self, k: usize) -> Vec<(u64, &[u8])> {
        self.diffs[k]
            .iter()
            .map(|(b, d)| (*b, d.as_slice()))
            .collect()
    }
}

/// Sets needs_recovery in the ext4 superblock on `dev` (the caller's job
/// at a read-write mount).
fn set_needs_recovery(dev: &dyn BlockDevice) {
    let mut raw = vec![0u8; 1024];
    dev.read_at(&mut raw, 1024).unwrap();
    let mut sb = Superblock::parse(&raw, dev.size()).unwrap();
    sb.s_feature_incompat |= sbf::INCOMPAT_RECOVER;
    sb.write(&mut raw);
    dev.write_at(&raw, 1024).unwrap();
    dev.flush().unwrap();
}

/// Clears needs_recovery (the caller's job after `Log::finish`).
fn clear_needs_recovery(dev: &dyn BlockDevice) {
    let mut raw = vec![0u8; 1024];
    dev.read_at(&mut raw, 1024).unwrap();
    let mut sb = Superblock::parse(&raw, dev.size()).unwrap();
    sb.s_feature_incompat &= !sbf::INCOMPAT_RECOVER;
    sb.write(&mut raw);
    dev.write_at(&raw, 1024).unwrap();
    dev.flush().unwrap();
}

/// A log on `dev` as a read-write mount starts it.
fn open_log(dev: Arc<dyn BlockDevice>) -> Log {
    let fs = Ext4::open_for_journal(dev).unwrap();
    let j = Journal::load(&fs).unwrap();
    Log::open(j, fs.sb()).unwrap()
}

/// A copy of `fx`'s first state marked as needing recovery, and a log
/// started on it (nothing written in place).
fn logging_on_first_state(fx: &Fixture) -> (Arc<MemDevice>, Log) {
    let mem = Arc::new(MemDevice::new(fx.states[0].clone()));
    set_needs_recovery(&*mem);
    let log = open_log(mem.clone());
    (mem, log)
}

/// Our read-write replay of `img`; returns the replayed image.
fn our_replay(img: Vec<u8>) -> Vec<u8> {
    let mem = Arc::new(MemDevice::new(img));
    recover_at_open(
        mem.clone(),
        &OpenOptions {
            read_only: false,
            ..Default::default()
        },
        true,
    )
    .unwrap();
    mem.contents()
}

/// e2fsck's replay of a copy of `img` (`e2fsck -fy`), then `e2fsck -fn`
/// must be clean. Returns the replayed image.
fn e2fsck_replay(fx: &Fixture, img: &[u8], name: &str) -> Vec<u8> {
    let p = fx.path(name);
    std::fs::write(&p, img).unwrap();
    let out = Command::new("e2fsck")
        .args(["-fy", p.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || (code == 1 && text.contains("recovering journal")),
        "e2fsck -fy exit {code}: {text}"
    );
    fsck_clean(&p);
    std::fs::read(&p).unwrap()
}

/// The kernel's replay of a copy (mount rw, umount); returns the image.
fn kernel_replay(fx: &Fixture, img: &[u8], name: &str) -> Vec<u8> {
    let p = fx.path(name);
    std::fs::write(&p, img).unwrap();
    {
        let _m = loop_mounted(&p, &fx.path(&format!("{name}.mnt")), "rw,noatime");
    }
    fsck_clean(&p);
    std::fs::read(&p).unwrap()
}

/// debugfs views of an image that must agree between two replays.
fn tree(fx: &Fixture, img: &[u8], name: &str) -> String {
    let p = fx.path(name);
    std::fs::write(&p, img).unwrap();
    let mut s = String::new();
    for cmd in [
        "ls -l /",
        "ls -l /d1",
        "stat /d1/f1",
        "cat /d1/f1",
        "cat /magic",
    ] {
        let out = Command::new("debugfs")
            .args(["-R", cmd, p.to_str().unwrap()])
            .output()
            .unwrap();
        s.push_str(&format!(
            "{cmd}:\n{}\n",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    s.lines()
        .filter(|l| !l.contains("ctime") && !l.contains("crtime"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Host files the debugfs scripts copy in.
fn host_files(fx_dir: &Path) -> PathBuf {
    let dir = fx_dir.join("host");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, len, seed) in [
        ("f1", 5000usize, 1u64),
        ("f2", 70_000, 2),
        ("small", 300, 3),
    ] {
        std::fs::write(dir.join(name), pattern(len, seed)).unwrap();
    }
    // A file whose first block starts with the jbd2 magic: its logged copy
    // must be escaped.
    let mut m = JBD2_MAGIC_NUMBER.to_be_bytes().to_vec();
    m.extend(pattern(9000, 4));
    std::fs::write(dir.join("magic"), m).unwrap();
    dir
}

fn basic_steps(host: &Path) -> Vec<String> {
    let h = host.display();
    vec![
        "ssv volume_name s1\nmkdir d1\n".into(),
        format!(
            "ssv volume_name s2\nwrite {h}/f1 d1/f1\nwrite {h}/f2 d1/f2\nsymlink d1/l1 /a/target\n"
        ),
        format!("ssv volume_name s3\nwrite {h}/magic magic\nsif d1/f1 mtime 20200101000000\n"),
        "ssv volume_name s4\nrm d1/f2\nmkdir d1/sub\n".into(),
    ]
}

const CONFIGS: &[(&str, &[&str])] = &[
    ("defaults", &["-b", "4096"]),
    ("1k", &["-b", "1024"]),
    ("nocsum", &["-b", "4096", "-O", "^metadata_csum"]),
    ("no64", &["-b", "4096", "-O", "^64bit"]),
    ("ext3", &["-t", "ext3"]),
];

fn skip() -> bool {
    !can_loop_mount() || Command::new("e2fsck").arg("-V").output().is_err()
}

/// (a) e2fsck, (b) the kernel and (c) our replay each give exactly the
/// committed state, on five feature sets; an escaped block included.
#[test]
fn commits_replay_in_e2fsck_kernel_and_ours() {
    if skip() {
        return;
    }
    for (tag, args) in CONFIGS {
        let sc = Scratch::new("jlog-host");
        let host = host_files(sc.path());
        let fx = fixture(tag, args, "32M", &basic_steps(&host));
        let (mem, log) = logging_on_first_state(&fx);
        for k in 0..fx.diffs.len() {
            let seq = log.commit(&fx.blocks(k), &[]).unwrap();
            assert_eq!(seq, log.stats().next_seq.wrapping_sub(1));
        }
        let img = mem.contents();
        let n = fx.states.len() - 1;
        // Nothing was written in place.
        assert_eq!(fx.which_state(&img), Ok(0), "{tag}");
        let ours = our_replay(img.clone());
        assert_eq!(fx.which_state(&ours), Ok(n), "{tag}: ours");
        let fsck = e2fsck_replay(&fx, &img, "fsck.img");
        assert_eq!(fx.which_state_fsck(&fsck), Ok(n), "{tag}: e2fsck");
        let p = fx.path("ours.img");
        std::fs::write(&p, &ours).unwrap();
        fsck_clean(&p);
        let kern = kernel_replay(&fx, &img, "kernel.img");
        assert_eq!(fx.which_state(&kern), Ok(n), "{tag}: kernel");
        let want = tree(&fx, &fx.states[n], "want.img");
        assert!(want.contains("magic"), "{want}");
        assert_eq!(tree(&fx, &kern, "kt.img"), want, "{tag}: kernel tree");
        assert_eq!(tree(&fx, &ours, "ot.img"), want, "{tag}: our tree");
        // The journal superblock carries the kernel's feature choices.
        let jfeat = String::from_utf8_lossy(
            &run_output("dumpe2fs", &["-h", fx.path("kernel.img").to_str().unwrap()]).stdout,
        )
        .lines()
        .filter(|l| l.starts_with("Journal features"))
        .collect::<String>();
        assert!(jfeat.contains("journal_incompat_revoke"), "{tag}: {jfeat}");
        eprintln!("{tag}: {} transactions, {jfeat}", fx.diffs.len());
    }
}

/// A log the filesystem does not ask to replay (needs_recovery clear, the
/// journal's s_start set: a crash between the journal superblock and the
/// ext4 superblock writes of a mount) is skipped by the kernel. A
/// read-write open skips it too (it refused the mount before), leaves the
/// filesystem as it was, and numbers its own transactions past the stale
/// ones, so that no stale transaction can follow them at a replay.
#[test]
fn unflagged_log_is_skipped_as_by_the_kernel() {
    if skip() {
        return;
    }
    let (tag, args) = CONFIGS[1];
    let sc = Scratch::new("jlog-host");
    let host = host_files(sc.path());
    let fx = fixture(tag, args, "32M", &basic_steps(&host));
    let (mem, log) = logging_on_first_state(&fx);
    let mut last = 0;
    for k in 0..fx.diffs.len() {
        last = log.commit(&fx.blocks(k), &[]).unwrap();
    }
    drop(log);
    clear_needs_recovery(&*mem);
    let img = mem.contents();
    let kern = kernel_replay(&fx, &img, "kernel.img");
    assert_eq!(fx.which_state(&kern), Ok(0), "the kernel replayed the log");

    let dev = Arc::new(MemDevice::new(img));
    let fs = open_on(dev.clone(), false);
    let next = fs.log_stats().unwrap().next_seq;
    assert!(
        next > last,
        "new transactions start at {next}, stale ones reach {last}"
    );
    fs.shutdown().unwrap();
    drop(fs);
    let ours = dev.contents();
    assert_eq!(fx.which_state(&ours), Ok(0), "we replayed the log");
    let p = fx.path("ours.img");
    std::fs::write(&p, &ours).unwrap();
    fsck_clean(&p);
}

/// (e) A revoked block is not replayed by e2fsck, the kernel or us; a
/// later transaction that logs it again is.
#[test]
fn revoked_blocks_are_not_replayed() {
    if skip() {
        return;
    }
    let fx = fixture(
        "revoke",
        &["-b", "4096"],
        "32M",
        &["ssv volume_name r1\n".into()],
    );
    let bs = fx.bs;
    let sb = Superblock::parse(&fx.states[0][1024..2048], fx.states[0].len() as u64).unwrap();
    // A free block near the end of the filesystem.
    let x = sb.s_blocks_count - 20;
    let out = run_output(
        "debugfs",
        &[
            "-R",
            &format!("testb {x}"),
            fx.path("a.img").to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("not in use"));
    let orig = block(&fx.states[0], bs, x).to_vec();
    let p1 = pattern(bs as usize, 11);
    let p2 = pattern(bs as usize, 12);
    // (what is logged after T1, expected contents of x)
    let cases: [(&str, Vec<u8>); 3] = [
        ("control", p1.clone()),
        ("revoked", orig),
        ("relogged", p2.clone()),
    ];
    for (case, want) in cases {
        let (mem, log) = logging_on_first_state(&fx);
        log.commit(&[(x, &p1)], &[]).unwrap();
        log.commit(&fx.blocks(0), &[]).unwrap();
        if case != "control" {
            log.commit(&[], &[(x, x + 1)]).unwrap();
        }
        if case == "relogged" {
            log.commit(&[(x, &p2)], &[]).unwrap();
        }
        let img = mem.contents();
        let ours = our_replay(img.clone());
        assert_eq!(block(&ours, bs, x), &want[..], "{case}: ours");
        assert_eq!(fx.which_state(&ours), Ok(1), "{case}");
        let fsck = e2fsck_replay(&fx, &img, "fsck.img");
        assert_eq!(block(&fsck, bs, x), &want[..], "{case}: e2fsck");
        let kern = kernel_replay(&fx, &img, "kernel.img");
        assert_eq!(block(&kern, bs, x), &want[..], "{case}: kernel");
    }
}

/// (d) A 1 MiB journal (1 KiB blocks) wraps many times: each commit is
/// checked by our replay, every tenth by e2fsck; the caller writes some
/// committed blocks in place itself (mark_in_place), the rest reach their
/// place through checkpoints.
#[test]
fn small_journal_wraps_with_checkpoints() {
    if skip() {
        return;
    }
    let sc = Scratch::new("jlog-host");
    let host = host_files(sc.path());
    let h = host.display();
    let mut steps = vec!["ssv volume_name w0\nmkdir d1\n".to_string()];
    for k in 1..48 {
        // Fresh contents each time (freed blocks are reused).
        std::fs::write(host.join(format!("w{k}")), pattern(60_000, 100 + k)).unwrap();
        steps.push(format!(
            "ssv volume_name w{k}\nwrite {h}/w{k} d1/g{k}\n{}",
            if k > 2 {
                format!("rm d1/g{}\n", k - 2)
            } else {
                String::new()
            }
        ));
    }
    let fx = fixture("wrap", &["-b", "1024", "-J", "size=1"], "32M", &steps);
    let (mem, log) = logging_on_first_state(&fx);
    let mut wraps = 0;
    let mut last_head = log.stats().head;
    let mut logged = 0u64;
    for k in 0..fx.diffs.len() {
        let blocks = fx.blocks(k);
        assert!(log.blocks_needed(blocks.len(), 0) <= u64::from(log.max_transaction()));
        let seq = log.commit(&blocks, &[]).unwrap();
        logged += blocks.len() as u64;
        // The caller writes every other committed block in place.
        let mine: Vec<(u64, u32)> = blocks
            .iter()
            .step_by(2)
            .map(|&(b, d)| {
                mem.write_at(d, b * fx.bs).unwrap();
                (b, seq)
            })
            .collect();
        log.mark_in_place(&mine);
        let st = log.stats();
        if st.head < last_head {
            wraps += 1;
        }
        last_head = st.head;
        let img = mem.contents();
        assert_eq!(
            fx.which_state(&our_replay(img.clone())),
            Ok(k + 1),
            "commit {k}"
        );
        if k % 10 == 9 {
            let fsck = e2fsck_replay(&fx, &img, "fsck.img");
            assert_eq!(fx.which_state_fsck(&fsck), Ok(k + 1), "commit {k}: e2fsck");
        }
    }
    assert!(wraps >= 3, "the log wrapped only {wraps} times");
    let img = mem.contents();
    let n = fx.states.len() - 1;
    let kern = kernel_replay(&fx, &img, "kernel.img");
    assert_eq!(fx.which_state(&kern), Ok(n), "kernel");
    // A clean finish leaves an empty journal and every block in place.
    log.finish().unwrap();
    assert!(log.commit(&[], &[]).is_err());
    let done = mem.contents();
    assert_eq!(fx.which_state(&done), Ok(n));
    // The caller then clears needs_recovery: e2fsck finds it clean with
    // nothing to recover, and the next mount starts a log again.
    clear_needs_recovery(&*mem);
    let p = fx.path("finished.img");
    std::fs::write(&p, mem.contents()).unwrap();
    fsck_clean(&p);
    let hdr = String::from_utf8_lossy(&run_output("dumpe2fs", &["-h", p.to_str().unwrap()]).stdout)
        .into_owned();
    assert!(hdr.contains("Journal start:            0"), "{hdr}");
    assert!(!hdr.contains("needs_recovery"), "{hdr}");
    let again = open_log(mem.clone());
    assert_eq!(again.stats().next_seq, log.stats().next_seq);
    eprintln!(
        "wrap: {} commits, {logged} blocks logged, the log wrapped {wraps} times",
        fx.diffs.len()
    );
}

/// (f) Power loss at many points of a run of commits and checkpoints
/// (the caller also writing in place): after each crash, our replay and
/// e2fsck's give a state with every transaction whose commit returned
/// and no partial one; e2fsck -fn finds ours clean.
#[test]
fn power_loss_during_commits() {
    if skip() {
        return;
    }
    let long = std::env::var_os("SAFEMOUNT_LONG_CRASH").is_some();
    let configs: &[(&str, &[&str])] = if long {
        CONFIGS
    } else {
        &[("defaults", &["-b", "4096"]), ("ext3", &["-t", "ext3"])]
    };
    let sc = Scratch::new("jlog-host");
    let host = host_files(sc.path());
    let h = host.display();
    let (mut points_total, mut fsck_total) = (0usize, 0usize);
    for (tag, args) in configs {
        // A minimal journal (1024 blocks) and files of up to 150 blocks, so the
        // log fills and commits checkpoint on their own.
        let big = args.contains(&"4096");
        let (jsize, blk) = if big {
            ("size=4", 4096)
        } else {
            ("size=1", 1024)
        };
        let mut steps = vec!["ssv volume_name p0\nmkdir d1\n".to_string()];
        for k in 1..18 {
            let len = if k % 2 == 0 { 150 * blk } else { 9 * blk };
            let mut data = pattern(len, 200 + k as u64);
            if k % 3 == 0 {
                data[..4].copy_from_slice(&JBD2_MAGIC_NUMBER.to_be_bytes());
            }
            std::fs::write(host.join(format!("p{k}")), data).unwrap();
            steps.push(format!(
                "ssv volume_name p{k}\nwrite {h}/p{k} d1/g{k}\n{}",
                if k > 3 {
                    format!("rm d1/g{}\n", k - 3)
                } else {
                    String::new()
                }
            ));
        }
        let mut a = args.to_vec();
        a.extend(["-J", jsize]);
        let fx = fixture(tag, &a, "32M", &steps);
        let mem = MemDevice::new(fx.states[0].clone());
        set_needs_recovery(&mem);
        let dev = Arc::new(PowerLoss::new(mem.contents()));
        let log = open_log(dev.clone());
        // Operation count when each commit started and returned.
        let mut started = Vec::new();
        let mut done = Vec::new();
        let mut wraps = 0;
        for k in 0..fx.diffs.len() {
            started.push(dev.ops());
            let blocks = fx.blocks(k);
            let head = log.stats().head;
            let seq = log.commit(&blocks, &[]).unwrap();
            done.push(dev.ops());
            if log.stats().head < head {
                wraps += 1;
            }
            if k % 2 == 1 {
                let mine: Vec<(u64, u32)> = blocks
                    .iter()
                    .step_by(3)
                    .map(|&(b, d)| {
                        dev.write_at(d, b * fx.bs).unwrap();
                        (b, seq)
                    })
                    .collect();
                log.mark_in_place(&mine);
            }
            if k % 4 == 3 {
                log.checkpoint().unwrap();
            }
        }
        assert!(wraps >= 1, "{tag}: the log never wrapped");
        let total = dev.ops();
        let points: Vec<usize> = if long {
            (0..=total).collect()
        } else {
            let mut p: BTreeSet<usize> = (0..=total).step_by((total / 6).max(1)).collect();
            for &d in done.iter().step_by(3) {
                p.extend([d.saturating_sub(1), d]);
            }
            p.into_iter().collect()
        };
        for (i, &p) in points.iter().enumerate() {
            let seed = (p as u64) << 8 | i as u64;
            let img = dev.crash_at(p, seed);
            let durable = done.iter().filter(|&&d| d <= p).count();
            let begun = started.iter().filter(|&&s| s < p).count();
            let ours = our_replay(img.clone());
            let s = fx
                .which_state(&ours)
                .unwrap_or_else(|e| panic!("{tag}: crash at {p}/{total}: ours: {e}"));
            assert!(
                s >= durable && s <= begun,
                "{tag}: crash at {p}: state {s}, durable {durable}, begun {begun}"
            );
            // e2fsck on every third point (every tenth in the long run).
            if i % if long { 10 } else { 3 } == 0 {
                let fsck = e2fsck_replay(&fx, &img, "fsck.img");
                assert_eq!(
                    fx.which_state_fsck(&fsck),
                    Ok(s),
                    "{tag}: crash at {p}: e2fsck"
                );
                let q = fx.path("ours.img");
                std::fs::write(&q, &ours).unwrap();
                fsck_clean(&q);
                fsck_total += 1;
            }
            points_total += 1;
        }
        eprintln!(
            "{tag}: {} commits, log wrapped {wraps} times, {total} device operations, {} crash \
             points checked",
            fx.diffs.len(),
            points.len()
        );
    }
    eprintln!("power loss: {points_total} crash images replayed, {fsck_total} also by e2fsck");
}

/// What the writer refuses: a transaction larger than the log, a block
/// twice, a block of the journal itself or past the filesystem, a short
/// block; none of these aborts the log. Needs only mkfs.
#[test]
fn refuses_bad_transactions() {
    if !crate::ext4::testutil::have_mkfs() {
        return;
    }
    let sc = Scratch::new("jlog-bad");
    let img = sc.path().join("a.img");
    mkfs(&img, &["-b", "1024", "-J", "size=1"], "16M");
    let mem = Arc::new(MemDevice::new(std::fs::read(&img).unwrap()));
    let log = open_log(mem.clone());
    let fs = Ext4::open_for_journal(mem.clone()).unwrap();
    let j = Journal::load(&fs).unwrap();
    let jblock = j.pblk(5).unwrap();
    let d = vec![7u8; 1024];
    let many: Vec<(u64, &[u8])> = (0..1100u64).map(|b| (3000 + b, &d[..])).collect();
    assert!(matches!(
        log.commit(&many, &[]),
        Err(crate::ext4::Error::NoSpace)
    ));
    assert!(log.commit(&[(3000, &d), (3000, &d)], &[]).is_err());
    assert!(log.commit(&[(jblock, &d)], &[]).is_err());
    assert!(log.commit(&[(1 << 40, &d)], &[]).is_err());
    assert!(log.commit(&[(3000, &d[..100])], &[]).is_err());
    // Still usable; a transaction of a quarter of the log fits.
    let n = log.max_transaction() as usize - 8;
    let quarter: Vec<(u64, &[u8])> = (0..n as u64).map(|b| (3000 + b, &d[..])).collect();
    assert!(log.blocks_needed(n, 0) <= u64::from(log.max_transaction()));
    for _ in 0..9 {
        // Nine quarters: commits checkpoint on their own.
        log.commit(&quarter, &[]).unwrap();
        assert!(log.stats().used < 1024);
    }
    assert_eq!(log.stats().next_seq, j.jsb.s_sequence.wrapping_add(9));
    log.checkpoint().unwrap();
    assert_eq!(log.stats().live_transactions, 0);
    assert!(log.space_left() >= 1020);
    let mut b = vec![0u8; 1024];
    mem.read_at(&mut b, 3001 * 1024).unwrap();
    assert_eq!(b, d);
}

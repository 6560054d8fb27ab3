//! Casefolded directories written through the engine, judged by e2fsck
//! (which checks every entry's folded hash against the index and looks
//! for names with equal folds): this kernel has no CONFIG_UNICODE, so
//! e2fsprogs is the oracle.

use unicode_normalization::UnicodeNormalization;

use crate::ext4::Ext4;
use crate::ext4::error::Error;
use crate::ext4::ondisk::inode::{EXT4_CASEFOLD_FL, EXT4_INDEX_FL};
use crate::ext4::testutil::{RwImage, assert_fsck_clean, have};
use crate::ext4::types::{Ino, ROOT_INO, RenameFlags};

/// Words from many scripts, none with characters newer than Unicode 12.1
/// (whose case the kernel's tables do not know).
const WORDS: [&str; 23] = [
    "Straße",
    "ẞig",
    "İstanbul",
    "ΟΔΥΣΣΕΥΣ",
    "ᾼθήνα",
    "ΐ",
    "café",
    "Ånström",
    "\u{212a}elvin",
    "ệ",
    "한국어",
    "ᏣᎳᎩ",
    "ქართული",
    "ՀԱՅԵՐԵՆ",
    "москва",
    "𐐀𐐨",
    "ﬃ",
    "ſtop",
    "😀👍🏽",
    "soft\u{ad}hyphen",
    "ＡＢＣ",
    "MiXeD.TxT",
    "lost+Found",
];

/// Case and normalization variants of `w` that the kernel folds alike
/// (for these words: the upper case of a dotless ı is not one).
fn variants(w: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<String> = vec![
        w.to_string(),
        w.to_uppercase(),
        w.to_lowercase(),
        w.nfd().collect(),
        w.nfc().collect(),
        w.to_uppercase().nfd().collect(),
    ];
    v.sort();
    v.dedup();
    v.into_iter().map(String::into_bytes).collect()
}

fn name(i: usize) -> String {
    format!("{}-{i:03}", WORDS[i % WORDS.len()])
}

fn create(fs: &Ext4, dir: Ino, n: &[u8]) -> crate::ext4::error::Result<Ino> {
    fs.create(dir, n, 0o100644, 0, 0, 0, 0).map(|a| a.ino)
}

/// `chattr +F` or `chattr -F`: the other flags kept.
fn set_casefold(fs: &Ext4, ino: Ino, on: bool) -> crate::ext4::error::Result<()> {
    let old = fs.get_flags(ino)?;
    let flags = if on {
        old | EXT4_CASEFOLD_FL
    } else {
        old & !EXT4_CASEFOLD_FL
    };
    fs.set_flags(ino, flags, true)
}

fn gone(fs: &Ext4, r: crate::ext4::error::Result<Option<Ino>>) {
    if let Some(ino) = r.unwrap() {
        fs.release_inode(ino).unwrap();
    }
}

/// Every variant of every name resolves to its inode; a variant cannot be
/// created again; renames and unlinks by variants find the entry; `chattr
/// +F` follows ext4's rules; then e2fsck -fn finds nothing to fix.
#[test]
fn casefolded_directories_read_write() {
    if !have(&["mkfs.ext4", "e2fsck"]) {
        return;
    }
    let im = RwImage::new("casefold-rw", &["-b", "1024", "-O", "casefold"]);
    let fs = im.open();
    let cf = fs.mkdir(ROOT_INO, b"cf", 0o755, 0, 0, 0).unwrap().ino;
    set_casefold(&fs, cf, true).unwrap();
    assert_ne!(fs.get_flags(cf).unwrap() & EXT4_CASEFOLD_FL, 0);
    // Only empty directories change; files never take the flag.
    let d = fs.lookup_ino(ROOT_INO, b"d").unwrap();
    assert!(matches!(set_casefold(&fs, d, true), Err(Error::NotEmpty)));
    let a = fs.lookup_ino(ROOT_INO, b"a").unwrap();
    assert!(matches!(
        set_casefold(&fs, a, true),
        Err(Error::Unsupported(_))
    ));
    // Subdirectories inherit the flag; files do not carry it.
    let sub = fs
        .mkdir(cf, "Ünter".as_bytes(), 0o755, 0, 0, 0)
        .unwrap()
        .ino;
    assert_ne!(fs.get_flags(sub).unwrap() & EXT4_CASEFOLD_FL, 0);
    assert_eq!(fs.lookup_ino(cf, "üNTER".as_bytes()).unwrap(), sub);
    // An emptied casefolded directory may drop the flag again.
    let tmp = fs.mkdir(cf, b"tmp", 0o755, 0, 0, 0).unwrap().ino;
    create(&fs, tmp, b"x").unwrap();
    assert!(matches!(
        set_casefold(&fs, tmp, false),
        Err(Error::NotEmpty)
    ));
    gone(&fs, fs.unlink(tmp, b"X"));
    set_casefold(&fs, tmp, false).unwrap();
    create(&fs, tmp, b"x").unwrap();
    create(&fs, tmp, b"X").unwrap();
    fs.mkdir(cf, b"Empty", 0o755, 0, 0, 0).unwrap();
    // Dotless i is a letter of its own.
    let dotless = create(&fs, cf, "ıslak".as_bytes()).unwrap();
    assert!(matches!(fs.lookup_ino(cf, b"ISLAK"), Err(Error::NotFound)));
    assert_ne!(create(&fs, cf, b"ISLAK").unwrap(), dotless);

    // Enough names for an htree with 1 KiB blocks.
    let count = 480;
    let mut inos = Vec::new();
    for i in 0..count {
        let ino = create(&fs, cf, name(i).as_bytes()).unwrap();
        inos.push(ino);
    }
    assert_ne!(fs.inode(cf).unwrap().flags & EXT4_INDEX_FL, 0, "no htree");
    for (i, ino) in inos.iter().enumerate() {
        for v in variants(&name(i)) {
            assert_eq!(
                fs.lookup_ino(cf, &v).unwrap(),
                *ino,
                "{:?} for {:?}",
                String::from_utf8_lossy(&v),
                name(i)
            );
            assert!(
                matches!(create(&fs, cf, &v), Err(Error::Exists)),
                "{:?}",
                String::from_utf8_lossy(&v)
            );
        }
    }
    // Ignorables vanish in the fold: "softhyphen" is "soft\u{ad}hyphen".
    assert_eq!(fs.lookup_ino(cf, b"SOFTHYPHEN-019").unwrap(), inos[19]);
    // Turkish dotless i is its own letter; ẞ and ß both fold to "ss".
    assert!(matches!(
        fs.lookup_ino(cf, b"istanbul-002"),
        Err(Error::NotFound)
    ));
    assert_eq!(fs.lookup_ino(cf, b"SSIG-001").unwrap(), inos[1]);
    // Names that are not UTF-8 (no strict mode): only their own bytes.
    let raw = create(&fs, cf, b"caf\xe9").unwrap();
    assert_eq!(fs.lookup_ino(cf, b"caf\xe9").unwrap(), raw);
    assert!(matches!(
        fs.lookup_ino(cf, b"CAF\xe9"),
        Err(Error::NotFound)
    ));
    let upper = create(&fs, cf, b"CAF\xe9").unwrap();
    assert_eq!(fs.lookup_ino(cf, b"CAF\xe9").unwrap(), upper);
    // e2fsck 1.47.0 cannot judge where such names live: its utf8_casefold
    // compares an unsigned char with -1, so a sequence found invalid
    // midway gives ENAMETOOLONG, not EINVAL, and pass 2 then checks the
    // entry against a stale hash (the entry it hashed before). The kernel
    // hashes the bytes (`invalid_utf8_is_opaque` in dir::casefold pins
    // that), so the names go before e2fsck looks.
    gone(&fs, fs.unlink(cf, b"caf\xe9"));
    gone(&fs, fs.unlink(cf, b"CAF\xe9"));

    // Rename and unlink by variants; a rename onto a variant of an
    // existing name replaces that entry (which keeps its name).
    let mut live: Vec<(String, Ino)> = (0..count).map(|i| (name(i), inos[i])).collect();
    for i in (0..count).step_by(3) {
        let v = variants(&name(i)).pop().unwrap();
        let to = format!("Renamed-{i:03}-{}", WORDS[(i + 5) % WORDS.len()]);
        assert_eq!(
            fs.rename(cf, &v, cf, to.as_bytes(), RenameFlags::default())
                .unwrap(),
            None
        );
        live[i].0 = to.to_uppercase();
    }
    for i in (1..count).step_by(3) {
        let v = variants(&name(i)).remove(0);
        gone(&fs, fs.unlink(cf, &v));
        live[i].0.clear();
    }
    let over = 2;
    gone(
        &fs,
        fs.rename(
            cf,
            name(5).to_lowercase().as_bytes(),
            cf,
            name(over).to_uppercase().as_bytes(),
            RenameFlags::default(),
        ),
    );
    live[over].1 = inos[5];
    live[5].0.clear();
    for (n, ino) in live.iter().filter(|(n, _)| !n.is_empty()) {
        for v in variants(n) {
            assert_eq!(fs.lookup_ino(cf, &v).unwrap(), *ino, "{n:?}");
        }
    }
    for i in (1..count).step_by(3) {
        assert!(matches!(
            fs.lookup_ino(cf, name(i).as_bytes()),
            Err(Error::NotFound)
        ));
    }
    // A directory removed by a variant of its name.
    assert!(
        fs.rmdir(cf, b"EMPTY")
            .unwrap()
            .is_some_and(|i| fs.release_inode(i).is_ok())
    );
    fs.shutdown().unwrap();
    drop(fs);
    assert_fsck_clean(im.save(), "casefolded directory edits");
}

/// Strict encoding: casefolded directories refuse names that are not
/// UTF-8 (EINVAL), on creation and lookup; other directories take them.
#[test]
fn strict_encoding_refuses_invalid_utf8() {
    if !have(&["mkfs.ext4", "e2fsck"]) {
        return;
    }
    let im = RwImage::new(
        "casefold-strict",
        &["-O", "casefold", "-E", "encoding_flags=strict"],
    );
    let fs = im.open();
    assert!(fs.sb().strict_encoding());
    let cf = fs.mkdir(ROOT_INO, b"cf", 0o755, 0, 0, 0).unwrap().ino;
    set_casefold(&fs, cf, true).unwrap();
    for bad in [&b"caf\xe9"[..], b"\xff", b"\xed\xa0\x80", b"\xc0\xaf"] {
        assert!(matches!(create(&fs, cf, bad), Err(Error::Invalid(_))));
        assert!(matches!(
            fs.mkdir(cf, bad, 0o755, 0, 0, 0),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(fs.lookup_ino(cf, bad), Err(Error::Invalid(_))));
        assert!(matches!(fs.unlink(cf, bad), Err(Error::Invalid(_))));
    }
    let f = create(&fs, cf, "Café".as_bytes()).unwrap();
    assert!(matches!(
        fs.rename(cf, "CAFÉ".as_bytes(), cf, b"x\xff", RenameFlags::default()),
        Err(Error::Invalid(_))
    ));
    assert_eq!(fs.lookup_ino(cf, "cafe\u{301}".as_bytes()).unwrap(), f);
    // Outside casefolded directories any bytes go.
    create(&fs, ROOT_INO, b"caf\xe9").unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    assert_fsck_clean(im.save(), "strict casefold edits");
}

/// Inline-data directories match by fold too, before and after they grow
/// into blocks.
#[test]
fn casefolded_inline_directories() {
    if !have(&["mkfs.ext4", "e2fsck"]) {
        return;
    }
    let im = RwImage::new(
        "casefold-inline",
        &["-O", "casefold,inline_data", "-I", "512"],
    );
    let fs = im.open();
    let cf = fs.mkdir(ROOT_INO, b"cf", 0o755, 0, 0, 0).unwrap().ino;
    set_casefold(&fs, cf, true).unwrap();
    let foo = create(&fs, cf, "Größe".as_bytes()).unwrap();
    assert_ne!(
        fs.inode(cf).unwrap().flags & crate::ext4::ondisk::inode::EXT4_INLINE_DATA_FL,
        0,
        "not inline"
    );
    assert_eq!(fs.lookup_ino(cf, "GRÖSSE".as_bytes()).unwrap(), foo);
    assert!(matches!(
        create(&fs, cf, "grösse".as_bytes()),
        Err(Error::Exists)
    ));
    for i in 0..60 {
        create(&fs, cf, format!("Entry-{i}").as_bytes()).unwrap();
    }
    for i in 0..60 {
        fs.lookup_ino(cf, format!("ENTRY-{i}").as_bytes()).unwrap();
    }
    assert_eq!(fs.lookup_ino(cf, "gröSSe".as_bytes()).unwrap(), foo);
    gone(&fs, fs.unlink(cf, "GRÖSSE".as_bytes()));
    assert!(matches!(
        fs.lookup_ino(cf, "Größe".as_bytes()),
        Err(Error::NotFound)
    ));
    fs.shutdown().unwrap();
    drop(fs);
    assert_fsck_clean(im.save(), "casefolded inline directory edits");
}

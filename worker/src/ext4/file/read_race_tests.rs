//! A read maps a file's blocks, then reads them. A truncate that frees
//! those blocks in between, followed by a write that reuses them for
//! another file, must not show the reader the other file's bytes.

use std::thread;
use std::time::Duration;

use super::Mapping;
use crate::ext4::testutil::{have_mkfs, pausing_fs_with_a};
use crate::ext4::types::{ROOT_INO, SetAttr};

const LEN: usize = 64 * 1024;

#[test]
fn a_read_never_sees_a_freed_block_reused() {
    if !have_mkfs() {
        return;
    }
    let (_sc, _img, dev, fs, a) = pausing_fs_with_a("read-race");
    fs.write(a, 0, &[0xAA; LEN]).unwrap();
    let Mapping::Mapped { pblk, .. } = fs.map_block(&fs.inode(a).unwrap(), 0).unwrap() else {
        panic!("a's first block is not mapped");
    };
    let bs = u64::from(fs.block_size());

    // The reader stops inside the device, its mapping of `a` in hand.
    dev.arm(pblk * bs..(pblk + 1) * bs);
    let reader = {
        let fs = fs.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; LEN];
            let n = fs.read(a, 0, &mut buf).unwrap();
            buf.truncate(n);
            buf
        })
    };
    dev.wait_paused();
    // Meanwhile `a` loses its blocks and `b` takes them.
    let writer = {
        let fs = fs.clone();
        thread::spawn(move || {
            let size = SetAttr {
                size: Some(0),
                ..Default::default()
            };
            fs.setattr(a, size).unwrap();
            let b = fs.create(ROOT_INO, b"b", 0o100644, 0, 0, 0, 0).unwrap().ino;
            fs.write(b, 0, &[0xBB; LEN]).unwrap();
            b
        })
    };
    // Without a guard the writer is done well within this.
    thread::sleep(Duration::from_millis(300));
    dev.release();
    let seen = reader.join().unwrap();
    let b = writer.join().unwrap();

    let b_inode = fs.inode(b).unwrap();
    let reused = (0..(LEN as u64 / bs)).any(|l| {
        matches!(fs.map_block(&b_inode, l), Ok(Mapping::Mapped { pblk: p, len, .. })
            if p <= pblk && pblk < p + len)
    });
    assert!(reused, "setup: b did not reuse a's block {pblk}");
    assert!(
        seen.iter().all(|&x| x == 0xAA),
        "the read of a showed {} bytes of b",
        seen.iter().filter(|&&x| x == 0xBB).count()
    );
}

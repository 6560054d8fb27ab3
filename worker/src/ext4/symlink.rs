//! readlink: fast symlinks (target in i_block), slow symlinks (target in
//! data block 0) and inline-data symlinks, told apart as the kernel's
//! `ext4_inode_is_fast_symlink` does.

use crate::ext4::Ext4;
use crate::ext4::crypt;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk::inode::{EXT4_INLINE_DATA_FL, I_BLOCK_SIZE, Inode};
use crate::ext4::ondisk::superblock::INCOMPAT_EA_INODE;
use crate::ext4::types::{FileKind, Ino};

/// PATH_MAX: a link target is shorter than this.
const PATH_MAX: u64 = 4096;

impl Ext4 {
    /// A fault in symlink `ino` (its size or inline target), at its inode.
    fn bad_link(&self, ino: Ino, why: impl std::fmt::Display) -> Error {
        Error::corrupt(format!("symlink {ino}: {why}"), self.inode_block(ino))
    }

    /// The kernel's ext4_inode_is_fast_symlink: without ea_inode, a
    /// symlink is fast when it owns no blocks besides its xattr block; with
    /// ea_inode (whose values may be charged to i_blocks), when the target
    /// fits i_block.
    fn is_fast_symlink(&self, inode: &Inode) -> bool {
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            return false;
        }
        if self.sb().has_incompat(INCOMPAT_EA_INODE) {
            return inode.size != 0 && inode.size < I_BLOCK_SIZE as u64;
        }
        let ea_blocks = if inode.file_acl != 0 {
            self.cluster_sectors()
        } else {
            0
        };
        inode.blocks.checked_sub(ea_blocks) == Some(0)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::Symlink {
            return Err(Error::Invalid("not a symbolic link"));
        }
        if crypt::is_encrypted(&inode) {
            return self.readlink_nokey(&inode);
        }
        let size = inode.size;
        if size == 0 || size >= PATH_MAX {
            return Err(self.bad_link(ino, format_args!("invalid length {size}")));
        }
        // size < 4096, so this cannot truncate.
        let len = size as usize;
        let target = if inode.has_flag(EXT4_INLINE_DATA_FL) {
            let data = self.inline_data(&inode)?;
            data.get(..len)
                .ok_or_else(|| self.bad_link(ino, format_args!("inline data shorter than {len}")))?
                .to_vec()
        } else if self.is_fast_symlink(&inode) {
            if len >= I_BLOCK_SIZE {
                return Err(self.bad_link(ino, format_args!("invalid fast symlink length {len}")));
            }
            inode.i_block.get(..len).unwrap_or(&[]).to_vec()
        } else {
            let block = self
                .read_file_block(&inode, 0)?
                .ok_or_else(|| self.bad_link(ino, "no data block"))?;
            if len >= block.len() {
                return Err(self.bad_link(ino, format_args!("length {len} does not fit a block")));
            }
            block.get(..len).unwrap_or(&[]).to_vec()
        };
        if target.len() != len || target.contains(&0) {
            return Err(self.bad_link(ino, format_args!("target shorter than i_size {len}")));
        }
        Ok(target)
    }

    /// An encrypted symlink's target as the kernel shows it without the
    /// key (fscrypt_get_symlink): the no-key form of the ciphertext, read
    /// from i_block (fast) or data block 0 (slow).
    fn readlink_nokey(&self, inode: &Inode) -> Result<Vec<u8>> {
        let block;
        let body: &[u8] = if self.is_fast_symlink(inode) {
            &inode.i_block
        } else {
            block = self
                .read_file_block(inode, 0)?
                .ok_or_else(|| self.bad_link(inode.ino, "no data block"))?;
            &block
        };
        crypt::nokey_symlink_target(body).map_err(|why| self.bad_link(inode.ino, why))
    }
}

#[cfg(test)]
mod tests {
    use crate::ext4::error::Error;
    use crate::ext4::ondisk::inode::EXT4_INLINE_DATA_FL;
    use crate::ext4::testutil::*;

    #[test]
    fn symlinks_of_every_kind() {
        if !have(&["mkfs.ext4"]) {
            return;
        }
        let s = Scratch::new("symlink");
        let t59 = "y".repeat(59);
        let t60 = "z".repeat(60);
        let t100 = format!("{}/end", "d".repeat(96));
        let t4000 = "p/".repeat(2000);
        let nonascii = "caf\u{e9}/\u{65e5}\u{672c}";
        let links = [
            ("short", "target"),
            ("fast59", t59.as_str()),
            ("slow60", t60.as_str()),
            ("mid", t100.as_str()),
            ("long", t4000.as_str()),
            ("utf8", nonascii),
        ];
        // A 4000-byte target needs a 4 KiB block: the 1 KiB tree lacks it.
        for tree in ["src", "src1k"] {
            let src = s.file(tree);
            std::fs::create_dir_all(&src).unwrap();
            for (name, target) in links {
                if tree == "src1k" && name == "long" {
                    continue;
                }
                std::os::unix::fs::symlink(target, src.join(name)).unwrap();
            }
            std::fs::write(src.join("file"), b"x").unwrap();
        }
        let configs: [(&str, &[&str]); 7] = [
            ("default", &["-b", "4096"]),
            ("nocsum", &["-b", "4096", "-O", "^metadata_csum"]),
            ("ext2", &["-b", "4096", "-t", "ext2"]),
            ("inline", &["-b", "4096", "-O", "inline_data"]),
            ("b1024", &["-b", "1024"]),
            ("i128", &["-b", "4096", "-I", "128"]),
            ("ea_inode", &["-b", "4096", "-O", "ea_inode"]),
        ];
        for (tag, args) in configs {
            let img = s.file(tag);
            let tree = if tag == "b1024" { "src1k" } else { "src" };
            mkfs_img(&s.file(tree), &img, args, "16M", false);
            let fs = open_image(&img).unwrap();
            for (name, target) in links {
                if tag == "b1024" && name == "long" {
                    continue;
                }
                let ino = resolve(&fs, name);
                let got = fs
                    .readlink(ino)
                    .unwrap_or_else(|e| panic!("{tag} {name}: {e}"));
                assert!(got == target.as_bytes(), "{tag} {name}");
                assert_eq!(fs.getattr(ino).unwrap().size, target.len() as u64);
            }
            if tag == "inline" {
                let mid = fs.inode(resolve(&fs, "mid")).unwrap();
                assert!(
                    mid.has_flag(EXT4_INLINE_DATA_FL),
                    "100-byte link not inline"
                );
            }
            let file = resolve(&fs, "file");
            assert!(matches!(fs.readlink(file), Err(Error::Invalid(_))));
        }
    }
}

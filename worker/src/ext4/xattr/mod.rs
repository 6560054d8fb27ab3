//! getxattr / listxattr over the in-inode region, the xattr block and
//! ea_inode values; POSIX ACLs converted to the generic xattr format; and
//! the inline-data bytes of an inode (i_block + "system.data").
//!
//! listxattr shows what the kernel's ext4 shows to a privileged caller:
//! user.*, trusted.*, security.*, gnu.* and the two POSIX ACL names, in
//! on-disk order (in-inode first, then the block). "system.data" (inline
//! data), richacl, lustre and the encryption context stay hidden. The
//! kernel hides trusted.* from callers without CAP_SYS_ADMIN; the engine
//! does not know the caller, so that filter belongs to the FUSE adapter.

pub(crate) mod acl;
pub(crate) mod share;
pub(crate) mod write;

use crate::ext4::Ext4;
use crate::ext4::error::{Error, Result};
use crate::ext4::ondisk;
use crate::ext4::ondisk::inode::{EXT4_EA_INODE_FL, EXT4_INLINE_DATA_FL, I_BLOCK_SIZE, Inode};
use crate::ext4::ondisk::superblock::INCOMPAT_EA_INODE;
use crate::ext4::ondisk::xattr::{
    self, INDEX_POSIX_ACL_ACCESS, INDEX_POSIX_ACL_DEFAULT, INDEX_SYSTEM, SYSTEM_DATA, XattrEntry,
    XattrLimits, XattrValue, index_is_listed, index_prefix, split_name,
};
use crate::ext4::types::Ino;

/// Longest attribute name (with prefix) the VFS accepts (XATTR_NAME_MAX).
const XATTR_NAME_MAX: usize = 255;

/// One attribute with its value location copied out of the block.
#[derive(Debug, Clone)]
struct OwnedXattr {
    index: u8,
    name: Vec<u8>,
    value: OwnedValue,
}

#[derive(Debug, Clone)]
enum OwnedValue {
    Bytes(Vec<u8>),
    EaInode { inum: u32, size: u32 },
}

impl OwnedXattr {
    fn from_entry(e: &XattrEntry<'_>) -> Self {
        OwnedXattr {
            index: e.name_index,
            name: e.name.to_vec(),
            value: match e.value {
                XattrValue::Inline(v) => OwnedValue::Bytes(v.to_vec()),
                XattrValue::EaInode { inum, size } => OwnedValue::EaInode { inum, size },
            },
        }
    }
}

impl Ext4 {
    /// What the xattr parsers need to know of the filesystem.
    pub(crate) fn xattr_limits(&self) -> XattrLimits {
        XattrLimits {
            ea_inode_feature: self.sb().has_incompat(INCOMPAT_EA_INODE),
            inodes_count: self.sb().s_inodes_count,
        }
    }

    /// The parsed in-inode xattr entries (the one parse of that area).
    pub(crate) fn ibody_entries<'a>(&self, inode: &'a Inode) -> Result<Vec<XattrEntry<'a>>> {
        xattr::parse_ibody(inode.inline_xattr_area(), &self.xattr_limits()).map_err(|p| {
            Error::corrupt(
                format!("in-inode xattrs of inode {}: {p}", inode.ino),
                self.inode_block(inode.ino),
            )
        })
    }

    /// The attributes stored inside the inode.
    fn ibody_xattrs(&self, inode: &Inode) -> Result<Vec<OwnedXattr>> {
        let entries = self.ibody_entries(inode)?;
        Ok(entries.iter().map(OwnedXattr::from_entry).collect())
    }

    /// The attributes in the inode's xattr block (none without one).
    /// `learn`: the read feeds the sharing index (see `share`).
    fn block_xattrs(&self, inode: &Inode, learn: bool) -> Result<Vec<OwnedXattr>> {
        let blocknr = inode.file_acl;
        if blocknr == 0 {
            return Ok(Vec::new());
        }
        let epoch = self.xattr_index_epoch();
        let block = self.read_block(blocknr)?;
        let seed = self.has_metadata_csum().then(|| self.csum_seed());
        let (h, entries) = xattr::parse_block(&block, blocknr, seed, &self.xattr_limits())
            .map_err(|p| {
                Error::corrupt(format!("xattr block of inode {}: {p}", inode.ino), blocknr)
            })?;
        // A block read for getxattr or listxattr may be shared from now
        // on, as the kernel's cache learns it (see `share`).
        if learn {
            self.xattr_index_note(epoch, h.hash, blocknr);
        }
        Ok(entries.iter().map(OwnedXattr::from_entry).collect())
    }

    fn all_xattrs(&self, inode: &Inode) -> Result<Vec<OwnedXattr>> {
        let mut all = self.ibody_xattrs(inode)?;
        all.extend(self.block_xattrs(inode, true)?);
        Ok(all)
    }

    /// Reads a value stored in an ea_inode, checking the inode is one and
    /// holds exactly `size` bytes.
    fn ea_inode_value(&self, owner: Ino, inum: u32, size: u32) -> Result<Vec<u8>> {
        if inum == owner {
            return Err(Error::corrupt(
                format!("inode {owner}: xattr value stored in the inode itself"),
                0,
            ));
        }
        let ea = self.inode(inum)?;
        if !ea.has_flag(EXT4_EA_INODE_FL) {
            return Err(Error::corrupt(
                format!("inode {owner}: xattr value inode {inum} lacks EXT4_EA_INODE_FL"),
                0,
            ));
        }
        if ea.size != u64::from(size) {
            return Err(Error::corrupt(
                format!(
                    "inode {owner}: xattr value inode {inum} has size {} != entry size {size}",
                    ea.size
                ),
                0,
            ));
        }
        let mut buf = vec![0u8; size as usize];
        let n = self.read_data(&ea, 0, &mut buf)?;
        if n != buf.len() {
            return Err(Error::corrupt(
                format!("inode {owner}: xattr value inode {inum} short read ({n} of {size})"),
                0,
            ));
        }
        Ok(buf)
    }

    fn xattr_value(&self, owner: Ino, x: OwnedXattr) -> Result<Vec<u8>> {
        match x.value {
            OwnedValue::Bytes(v) => Ok(v),
            OwnedValue::EaInode { inum, size } => self.ea_inode_value(owner, inum, size),
        }
    }

    /// getxattr(2) as the VFS asks it (FUSE GETXATTR).
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.getxattr_from(ino, name, true)
    }

    /// `from_vfs`: a request from outside; the engine's own reads (its
    /// ACL logic) are reads the kernel answers from its cached ACLs and
    /// teach the sharing index nothing.
    pub(crate) fn getxattr_from(&self, ino: Ino, name: &[u8], from_vfs: bool) -> Result<Vec<u8>> {
        if name.len() > XATTR_NAME_MAX {
            return Err(Error::NameTooLong);
        }
        let (index, suffix) = split_name(name)
            .ok_or_else(|| Error::Unsupported("extended attribute namespace".into()))?;
        let inode = self.inode(ino)?;
        let same = |x: &OwnedXattr| x.index == index && x.name == suffix;
        // The in-inode area first; the block is read only for a name not
        // there (ext4_xattr_get), which decides what the sharing index
        // learns (see `share`).
        let found = match self.ibody_xattrs(&inode)?.into_iter().find(same) {
            Some(x) => Some(x),
            None => {
                let learn = from_vfs
                    && !self.nosec_lookup(&inode, name)
                    && !self.acl_cached_lookup(&inode, index);
                self.block_xattrs(&inode, learn)?.into_iter().find(same)
            }
        };
        self.nosec_note(&inode, name, found.is_some());
        let found = found.ok_or(Error::NoAttribute)?;
        let value = self.xattr_value(ino, found)?;
        if index == INDEX_POSIX_ACL_ACCESS || index == INDEX_POSIX_ACL_DEFAULT {
            let entries = ondisk::acl::parse(&value)
                .map_err(|p| Error::corrupt(format!("ACL of inode {ino}: {p}"), 0))?;
            if entries.is_empty() {
                return Err(Error::NoAttribute);
            }
            return Ok(ondisk::acl::to_xattr(&entries));
        }
        Ok(value)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let inode = self.inode(ino)?;
        let mut names = Vec::new();
        for x in self.all_xattrs(&inode)? {
            if !index_is_listed(x.index) {
                continue;
            }
            let Some(prefix) = index_prefix(x.index) else {
                continue;
            };
            let mut full = prefix.to_vec();
            full.extend_from_slice(&x.name);
            names.push(full);
        }
        Ok(names)
    }

    /// The inline data of an inode with EXT4_INLINE_DATA_FL: the 60 bytes
    /// of i_block followed by the in-inode "system.data" value, cut to
    /// i_size.
    pub(crate) fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>> {
        if !inode.has_flag(EXT4_INLINE_DATA_FL) {
            return Err(Error::Invalid("inode has no inline data"));
        }
        let system_data = self
            .ibody_xattrs(inode)?
            .into_iter()
            .find(|x| x.index == INDEX_SYSTEM && x.name == SYSTEM_DATA)
            .ok_or_else(|| {
                Error::corrupt(
                    format!("inode {}: inline data without system.data", inode.ino),
                    0,
                )
            })?;
        let OwnedValue::Bytes(extra) = system_data.value else {
            return Err(Error::corrupt(
                format!("inode {}: system.data stored in an ea_inode", inode.ino),
                0,
            ));
        };
        let mut data = Vec::with_capacity(I_BLOCK_SIZE.saturating_add(extra.len()));
        data.extend_from_slice(&inode.i_block);
        data.extend_from_slice(&extra);
        let len = usize::try_from(inode.size).unwrap_or(usize::MAX);
        data.truncate(len);
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::OwnedValue;
    use crate::ext4::error::Error;
    use crate::ext4::ondisk::inode::EXT4_INLINE_DATA_FL;
    use crate::ext4::testutil::*;
    use std::path::Path;

    fn setfattr(path: &Path, name: &str, value: &[u8]) {
        let vfile = path.with_extension("value-tmp");
        std::fs::write(&vfile, value).unwrap();
        // `setfattr --restore` would need escaping; -v with a hex value is
        // exact for any bytes.
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        run(
            "setfattr",
            &[
                "-n",
                name,
                "-v",
                &format!("0x{hex}"),
                path.to_str().unwrap(),
            ],
        );
        std::fs::remove_file(vfile).unwrap();
    }

    /// The raw value the kernel returns for `name` on the source tree.
    fn source_value(path: &Path, name: &str) -> Vec<u8> {
        let out = std::process::Command::new("getfattr")
            .args([
                "--absolute-names",
                "--only-values",
                "-n",
                name,
                path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "getfattr {name} {path:?}");
        out.stdout
    }

    /// 3000 bytes: too big for the inode, so it goes to the xattr block
    /// (900 on 1 KiB blocks, where 3000 cannot fit one block).
    fn big_value_for(bs: u32) -> Vec<u8> {
        let n = if bs == 1024 { 900 } else { 3000 };
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn big_value() -> Vec<u8> {
        big_value_for(4096)
    }

    #[test]
    fn xattrs_and_acls_across_features() {
        if !have(&[
            "mkfs.ext4",
            "e2fsck",
            "debugfs",
            "setfattr",
            "getfattr",
            "setfacl",
        ]) {
            return;
        }
        let s = Scratch::new("xattr");
        // One source tree per block size class.
        for (tree, bs) in [("src", 4096), ("src1k", 1024)] {
            let src = s.file(tree);
            std::fs::create_dir_all(src.join("dir")).unwrap();
            let files = ["plain", "small", "big", "acl", "both"];
            for f in files {
                std::fs::write(src.join(f), b"data").unwrap();
            }
            setfattr(&src.join("small"), "user.a", b"1");
            setfattr(&src.join("small"), "user.colour", b"blue");
            setfattr(&src.join("small"), "trusted.t", b"root-only");
            setfattr(&src.join("big"), "user.big", &big_value_for(bs));
            setfattr(&src.join("big"), "user.tiny", b"");
            setfattr(&src.join("both"), "user.x", b"y");
            run(
                "setfacl",
                &["-m", "u:1000:r,g:100:rw", src.join("acl").to_str().unwrap()],
            );
            run(
                "setfacl",
                &["-m", "u:4242:rwx", src.join("both").to_str().unwrap()],
            );
            run(
                "setfacl",
                &[
                    "-d",
                    "-m",
                    "u:1000:rx,g:100:r",
                    src.join("dir").to_str().unwrap(),
                ],
            );
        }
        let src = s.file("src");
        let want_acl = source_value(&src.join("acl"), "system.posix_acl_access");
        let want_both = source_value(&src.join("both"), "system.posix_acl_access");
        let want_default = source_value(&src.join("dir"), "system.posix_acl_default");
        assert_eq!(&want_acl[..4], &2u32.to_le_bytes());

        let configs: [(&str, &[&str]); 6] = [
            ("default", &["-b", "4096"]),
            ("nocsum", &["-b", "4096", "-O", "^metadata_csum"]),
            ("ext2", &["-b", "4096", "-t", "ext2"]),
            ("inline", &["-b", "4096", "-O", "inline_data"]),
            ("b1024", &["-b", "1024"]),
            ("i128", &["-b", "4096", "-I", "128"]),
        ];
        for (tag, args) in configs {
            let img = s.file(tag);
            let (tree, bs) = if tag == "b1024" {
                ("src1k", 1024)
            } else {
                ("src", 4096)
            };
            mkfs_img(&s.file(tree), &img, args, "16M", false);
            let fs = open_image(&img).unwrap();
            let ino = |p: &str| resolve(&fs, p);
            let get = |p: &str, n: &str| fs.getxattr(ino(p), n.as_bytes());

            assert_eq!(
                fs.listxattr(ino("plain")).unwrap(),
                Vec::<Vec<u8>>::new(),
                "{tag}"
            );
            assert!(
                matches!(get("plain", "user.a"), Err(Error::NoAttribute)),
                "{tag}"
            );
            assert_eq!(get("small", "user.a").unwrap(), b"1", "{tag}");
            assert_eq!(get("small", "user.colour").unwrap(), b"blue", "{tag}");
            assert_eq!(get("small", "trusted.t").unwrap(), b"root-only", "{tag}");
            let mut names = fs.listxattr(ino("small")).unwrap();
            names.sort();
            assert_eq!(
                names,
                vec![
                    b"trusted.t".to_vec(),
                    b"user.a".to_vec(),
                    b"user.colour".to_vec()
                ],
                "{tag}"
            );
            assert!(
                get("big", "user.big").unwrap() == big_value_for(bs),
                "{tag}"
            );
            assert_eq!(get("big", "user.tiny").unwrap(), b"", "{tag}");
            assert!(
                matches!(get("big", "user.bi"), Err(Error::NoAttribute)),
                "{tag}"
            );
            assert!(
                matches!(get("big", "system.data"), Err(Error::Unsupported(_))),
                "{tag}"
            );
            assert_eq!(
                get("acl", "system.posix_acl_access").unwrap(),
                want_acl,
                "{tag}"
            );
            assert_eq!(
                get("both", "system.posix_acl_access").unwrap(),
                want_both,
                "{tag}"
            );
            assert_eq!(get("both", "user.x").unwrap(), b"y", "{tag}");
            assert_eq!(
                get("dir", "system.posix_acl_default").unwrap(),
                want_default,
                "{tag}"
            );
            assert!(
                matches!(
                    get("acl", "system.posix_acl_default"),
                    Err(Error::NoAttribute)
                ),
                "{tag}"
            );
            let mut names = fs.listxattr(ino("both")).unwrap();
            names.sort();
            assert_eq!(
                names,
                vec![b"system.posix_acl_access".to_vec(), b"user.x".to_vec()],
                "{tag}"
            );
            // Inline files keep "system.data" hidden.
            let plain = fs.inode(ino("plain")).unwrap();
            if tag == "inline" {
                assert!(plain.has_flag(EXT4_INLINE_DATA_FL));
                assert_eq!(fs.inline_data(&plain).unwrap(), b"data");
            }
        }
    }

    #[test]
    fn ea_inode_values() {
        if !have(&["mkfs.ext4", "debugfs"]) {
            return;
        }
        let s = Scratch::new("eainode");
        let src = s.file("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let img = s.file("img");
        mkfs_img(&src, &img, &["-O", "ea_inode", "-b", "1024"], "16M", false);
        // debugfs `ea_set -f` reads at most one block from the file, so
        // the value goes on the command line: 3000 bytes exceed a 1 KiB
        // block, so it is stored in an ea_inode.
        let value: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let text = String::from_utf8(value.clone()).unwrap();
        debugfs(&img, &format!("ea_set /f user.huge {text}"));
        let fs = open_image(&img).unwrap();
        let f = resolve(&fs, "f");
        let got = fs.getxattr(f, b"user.huge").unwrap();
        let first_diff = got.iter().zip(&value).position(|(a, b)| a != b);
        assert!(
            got == value,
            "len {} vs {}, first difference at {first_diff:?}",
            got.len(),
            value.len()
        );
        assert_eq!(fs.listxattr(f).unwrap(), vec![b"user.huge".to_vec()]);
        let inode = fs.inode(f).unwrap();
        let all = fs.all_xattrs(&inode).unwrap();
        assert!(matches!(
            all[0].value,
            OwnedValue::EaInode { size: 3000, .. }
        ));
    }

    #[test]
    fn corrupt_xattr_block_is_reported() {
        if !have(&["mkfs.ext4", "debugfs", "setfattr"]) {
            return;
        }
        let s = Scratch::new("badxattr");
        let src = s.file("src");
        std::fs::create_dir_all(&src).unwrap();
        for f in ["victim", "other"] {
            std::fs::write(src.join(f), b"x").unwrap();
            setfattr(&src.join(f), "user.big", &big_value());
        }
        for (tag, args) in [
            ("csum", &["-b", "4096"][..]),
            ("nocsum", &["-b", "4096", "-O", "^metadata_csum"]),
        ] {
            let img = s.file(tag);
            mkfs_img(&src, &img, args, "16M", false);
            let fs = open_image(&img).unwrap();
            let victim = fs.inode(resolve(&fs, "victim")).unwrap();
            let blk = victim.file_acl;
            drop(fs);
            // e_value_offs of the first entry points past the block.
            patch(&img, 4096, blk, 32 + 2, &0xfff0u16.to_le_bytes());
            let fs = open_image(&img).unwrap();
            let err = fs
                .getxattr(resolve(&fs, "victim"), b"user.big")
                .unwrap_err();
            let text = err.to_string();
            if tag == "csum" {
                assert!(text.contains("xattr block checksum"), "{text}");
            } else {
                assert!(text.contains("value out of bounds"), "{text}");
            }
            assert!(matches!(err, Error::Corrupt { block, .. } if block == blk));
            assert!(fs.listxattr(resolve(&fs, "victim")).is_err());
            assert_eq!(
                fs.getxattr(resolve(&fs, "other"), b"user.big").unwrap(),
                big_value()
            );
        }
    }
}

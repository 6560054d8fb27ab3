//! Plain values the engine hands to its callers (the FUSE adapter).

/// An ext4 inode number. Inode numbers are used unchanged as FUSE inode
/// numbers, except that FUSE's root (1) is ext4's root (2), mapped in the
/// adapter.
pub type Ino = u32;

pub const ROOT_INO: Ino = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    RegularFile,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// Seconds since the epoch (may be negative) plus nanoseconds; ordered
/// by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nsecs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (mode & 0o7777).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Allocated space in 512-byte units, as stat(2) reports it.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Device number for char/block devices (Linux encoding), else 0.
    pub rdev: u32,
    pub generation: u32,
    /// The filesystem block size, reported as st_blksize.
    pub blksize: u32,
}

/// One directory entry as readdir returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub name: Vec<u8>,
    pub kind: FileKind,
    /// Opaque cookie: passing it back to `readdir` resumes after this entry.
    pub next_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFs {
    /// Fragment (cluster) size in bytes; bsize is the block size.
    pub bsize: u32,
    pub frsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namelen: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    Data,
    Hole,
}

/// rename(2) flags (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
    pub whiteout: bool,
}

/// setxattr(2) flags: XATTR_CREATE (fail with EEXIST if present),
/// XATTR_REPLACE (fail with ENODATA if absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XattrFlags {
    pub create: bool,
    pub replace: bool,
}

/// Who a write comes from, for the rules that depend on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteAs {
    /// The caller may use root-reserved blocks
    /// ([`crate::ext4::Ext4::may_use_reserved`]).
    pub reserved_ok: bool,
    /// Written back from the kernel's page cache (FUSE_WRITE_CACHE): the
    /// kernel set mtime and ctime at write(2) or at the mmap store, as
    /// ext4 does, and sends them with a SETATTR of their own; the write
    /// leaves them alone. (Setting them here stamped the write-back's time,
    /// up to 30 s later, on disk whenever that SETATTR came first.) The
    /// writer is unknown then (the request comes as root): the file's
    /// owner decides `reserved_ok` instead, else every user could fill
    /// the root-reserved blocks.
    pub page_cache: bool,
}

/// A time to set: the current time, or an explicit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// What setattr changes; `None` leaves a field alone. ctime becomes now
/// on every change unless given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (mode & 0o7777); the file type is kept.
    pub mode: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<TimeSet>,
    /// Clear setuid, and setgid when group-executable, on a
    /// non-directory (the VFS's should_remove_suid rule), as part of
    /// this change.
    pub kill_suid_sgid: bool,
}

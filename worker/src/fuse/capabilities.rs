//! What INIT asks of the kernel. Each capability is asked for separately,
//! so a kernel lacking one still gets the others.

use fuser::InitFlags;

/// The capabilities for a mount (`read_only`, whether quota limits are
/// enforced).
pub(super) fn wanted(read_only: bool, quota_limits: bool) -> InitFlags {
    // Deliberately not requested: SETXATTR_EXT (fuser 0.18.0 mishandles
    // it).
    let mut wanted = InitFlags::FUSE_ASYNC_READ
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_MAX_PAGES
        | InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS;
    // File handles outlive the kernel's inode cache (open_by_handle_at,
    // NFS export): the kernel asks for an inode it evicted by a LOOKUP of
    // "." (Adapter::lookup) and a directory's parent by "..".
    wanted |= InitFlags::FUSE_EXPORT_SUPPORT;
    // Every listing is a READDIRPLUS (no READDIRPLUS_AUTO): with the
    // kernel's heuristic only a directory's first batch carried
    // attributes, since find, du, ls -l and file managers read a whole
    // directory before they stat its entries, and every entry after the
    // first batch then cost a LOOKUP. A cold stat walk of 10,000 files
    // went from 0.31 s to 0.06 s; a names-only walk (find -name) pays for
    // reading the inodes it does not need (bench/README.md, "Listings").
    // The kernel enforces POSIX ACLs in its permission checks (reading
    // them with getxattr, which the engine answers in the generic xattr
    // format), as it does on ext4.
    wanted |= InitFlags::FUSE_POSIX_ACL;
    // A symlink's target never changes: a new target is a new inode. (A
    // freed inode number is not reused while the kernel still holds the
    // old inode: the worker frees it only at the kernel's FORGET.)
    wanted |= InitFlags::FUSE_CACHE_SYMLINKS;
    if !read_only {
        // With POSIX_ACL the kernel leaves the umask to the server
        // (DONT_MASK makes that explicit): the engine applies it only
        // where the parent has no default ACL, and does every ACL mode
        // update itself (see ext4::xattr::acl).
        wanted |= InitFlags::FUSE_DONT_MASK;
        // OPENDIR is answered ENOSYS, and the kernel stops asking (see
        // Adapter::skip_opendir). Not read-only: there every directory
        // open asks the kernel to keep its cached listing.
        wanted |= InitFlags::FUSE_NO_OPENDIR_SUPPORT;
        // The kernel caches written pages and sends them in large
        // writes; it keeps i_size and mtime itself and tells us with
        // setattr. It writes pages back whole, so below page-sized blocks
        // a small write arrives with zeros read from holes beside it: the
        // engine leaves those blocks unallocated, as ext4 does (see
        // ext4::file::page_writeback).
        //
        // Not with quota limits: cached pages reach the worker as the
        // kernel's writeback, long after write(2) returned, so a write
        // past a limit could not fail with EDQUOT (nor stop short) as on
        // ext4, where the page cache reserves quota per block.
        if !quota_limits {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        // The server clears setuid/setgid on write, chown and truncate
        // (see Adapter::setattr and Adapter::write). What it buys: the
        // kernel marks the superblock SB_NOSEC, so a write(2) no longer
        // asks for security.capability first (a GETXATTR round trip per
        // write(2) without it; 20,000 4 KiB writes: 20,003 requests
        // against 80).
        wanted |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
    }
    wanted
}

//! What INIT asks of the kernel. Each capability is asked for separately,
//! so a kernel lacking one still gets the others.

use fuser::InitFlags;

use super::PAGE_SIZE;

/// The capabilities for a mount (`read_only`, the filesystem's
/// `block_size`, whether quota limits are enforced).
pub(super) fn wanted(read_only: bool, block_size: u32, quota_limits: bool) -> InitFlags {
    // Deliberately not requested: HANDLE_KILLPRIV_V2 and SETXATTR_EXT
    // (fuser 0.18.0 mishandles both), EXPORT_SUPPORT.
    let mut wanted = InitFlags::FUSE_ASYNC_READ
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_MAX_PAGES
        | InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO;
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
        // setattr.
        //
        // Not below page-sized blocks: the kernel writes cached pages
        // back whole, so a 1 KiB write into a hole would allocate the
        // page's other three blocks with zeros, where ext4 leaves
        // holes.
        //
        // Not with quota limits either: cached pages reach the worker as
        // the kernel's writeback, long after write(2) returned, so a
        // write past a limit could not fail with EDQUOT (nor stop short)
        // as on ext4, where the page cache reserves quota per block.
        if block_size >= PAGE_SIZE && !quota_limits {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
    }
    wanted
}

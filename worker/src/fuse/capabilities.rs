//! What INIT asks of the kernel. Each capability is asked for separately,
//! so a kernel lacking one still gets the others.

use fuser::InitFlags;

use super::PAGE_SIZE;

/// The capabilities for a mount (`read_only`, the filesystem's
/// `block_size`).
pub(super) fn wanted(read_only: bool, block_size: u32) -> InitFlags {
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
    if read_only {
        // Symlink targets never change on a read-only mount.
        wanted |= InitFlags::FUSE_CACHE_SYMLINKS;
    } else {
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
        if block_size >= PAGE_SIZE {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
    }
    wanted
}

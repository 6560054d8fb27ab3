//! Access times, as the atime mount options ask: under `relatime` (the
//! kernel's default) a read moves a file's atime to now only when the old
//! one is no later than its mtime or ctime (the first read after a
//! change), or more than a day old (fs/inode.c, relatime_need_update);
//! under `strictatime` every read does; under `noatime` none. Inodes
//! flagged noatime (`chattr +A`) keep theirs, directories too under
//! `nodiratime`, and so does a read-only mount. Setting atime this way
//! leaves ctime alone, as touch_atime does.

use crate::ext4::error::Result;
use crate::ext4::ondisk::inode::Inode;
use crate::ext4::types::{FileKind, Ino, Timestamp};
use crate::ext4::{Ext4, inode_flags};

/// A day, in seconds: how stale an atime relatime lets stand.
const DAY_SECS: i64 = 24 * 60 * 60;

/// Which reads move access times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtimeUpdates {
    /// `noatime`.
    #[default]
    Never,
    /// `relatime`.
    Relative,
    /// `strictatime`.
    Always,
}

impl Ext4 {
    /// `ino` was read (its data, its entries or its target): moves its
    /// atime to now if the mount options ask for it. Returns whether the
    /// atime changed, so the caller can make the kernel forget the one it
    /// caches.
    pub fn accessed(&self, ino: Ino) -> Result<bool> {
        if self.atime == AtimeUpdates::Never || self.is_read_only() {
            return Ok(false);
        }
        let now = self.now();
        // Most reads change nothing: decide from the cached inode first,
        // and take the transaction lock only for an update.
        if !self.needs_update(&*self.inode(ino)?, now) {
            return Ok(false);
        }
        let mut txn = self.begin()?;
        let mut inode = txn.inode(ino)?;
        if !self.needs_update(&inode, now) {
            return Ok(false);
        }
        inode.atime = now;
        txn.put_inode(inode);
        txn.commit()?;
        Ok(true)
    }

    /// atime_needs_update, with relatime_need_update under `relatime`.
    fn needs_update(&self, inode: &Inode, now: Timestamp) -> bool {
        if inode_flags::is_noatime(inode)
            || (self.nodiratime && inode.kind == FileKind::Directory)
            || inode.atime == now
        {
            return false;
        }
        match self.atime {
            AtimeUpdates::Never => false,
            AtimeUpdates::Always => true,
            AtimeUpdates::Relative => {
                inode.mtime >= inode.atime
                    || inode.ctime >= inode.atime
                    || now.secs.saturating_sub(inode.atime.secs) >= DAY_SECS
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{AtimeUpdates, DAY_SECS};
    use crate::ext4::ondisk::inode::EXT4_NOATIME_FL;
    use crate::ext4::testutil::{Scratch, mkfs};
    use crate::ext4::txn::now;
    use crate::ext4::types::{Ino, SetAttr, TimeSet, Timestamp};
    use crate::ext4::{Ext4, OpenOptions, ROOT_INO};
    use crate::io::MemDevice;

    /// An empty filesystem with the file "f", open read-write, with
    /// access times updated as `atime` and `nodiratime` say.
    fn with_file(atime: AtimeUpdates, nodiratime: bool) -> (Scratch, Ext4, Ino) {
        let sc = Scratch::new("atime");
        let src = sc.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let img = mkfs(&sc, &src, &[], 4096);
        let dev = Arc::new(MemDevice::new(std::fs::read(&img).unwrap()));
        let opts = OpenOptions {
            atime,
            nodiratime,
            ..Default::default()
        };
        let fs = Ext4::open(dev, opts).unwrap();
        let f = fs.create(ROOT_INO, b"f", 0o100644, 0, 0, 0, 0).unwrap().ino;
        (sc, fs, f)
    }

    fn seconds_ago(secs: i64) -> Timestamp {
        Timestamp {
            secs: now().secs - secs,
            nsecs: 0,
        }
    }

    /// Sets atime, mtime and ctime to the given ages in seconds; returns
    /// the times set.
    fn set_ages(fs: &Ext4, ino: Ino, ages: [i64; 3]) -> [Timestamp; 3] {
        let [atime, mtime, ctime] = ages.map(seconds_ago);
        let set = SetAttr {
            atime: Some(TimeSet::At(atime)),
            mtime: Some(TimeSet::At(mtime)),
            ctime: Some(TimeSet::At(ctime)),
            ..Default::default()
        };
        fs.setattr(ino, set).unwrap();
        [atime, mtime, ctime]
    }

    #[test]
    fn reads_move_the_atime_as_relatime_does() {
        let (_sc, fs, f) = with_file(AtimeUpdates::Relative, false);
        // Just made: atime equals mtime, so the first read moves it, once
        // the (coarse) clock has ticked: an atime that already is now stays.
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(fs.accessed(f).unwrap());
        assert!(!fs.accessed(f).unwrap(), "a second read moved it again");

        set_ages(&fs, f, [100, 50, 50]);
        assert!(
            fs.accessed(f).unwrap(),
            "an atime before the last change stayed"
        );

        set_ages(&fs, f, [3600, 7200, 7200]);
        assert!(
            !fs.accessed(f).unwrap(),
            "an hour-old atime after the last change moved"
        );

        let [_, _, ctime] = set_ages(&fs, f, [DAY_SECS + 10, 3 * DAY_SECS, 3 * DAY_SECS]);
        let before = now();
        assert!(fs.accessed(f).unwrap(), "an atime over a day old stayed");
        let a = fs.getattr(f).unwrap();
        assert!(a.atime >= before, "atime {:?} is not now", a.atime);
        assert_eq!(a.ctime, ctime, "ctime moved");
    }

    #[test]
    fn noatime_mounts_and_inodes_keep_the_atime() {
        let (_sc, fs, f) = with_file(AtimeUpdates::Never, false);
        let [atime, _, _] = set_ages(&fs, f, [100, 50, 50]);
        assert!(!fs.accessed(f).unwrap());
        assert_eq!(fs.getattr(f).unwrap().atime, atime);

        let (_sc, fs, f) = with_file(AtimeUpdates::Always, false);
        let flags = fs.get_flags(f).unwrap();
        fs.set_flags(f, flags | EXT4_NOATIME_FL, false).unwrap();
        set_ages(&fs, f, [100, 50, 50]);
        assert!(!fs.accessed(f).unwrap());
    }

    #[test]
    fn strictatime_moves_it_every_time_and_nodiratime_spares_directories() {
        let tick = || std::thread::sleep(std::time::Duration::from_millis(30));
        let (_sc, fs, f) = with_file(AtimeUpdates::Always, true);
        for _ in 0..3 {
            tick();
            assert!(fs.accessed(f).unwrap());
        }
        set_ages(&fs, f, [3600, 7200, 7200]);
        assert!(
            fs.accessed(f).unwrap(),
            "strictatime kept an hour-old atime"
        );
        tick();
        assert!(
            !fs.accessed(ROOT_INO).unwrap(),
            "nodiratime moved a directory's"
        );

        let (_sc, fs, _) = with_file(AtimeUpdates::Always, false);
        tick();
        assert!(fs.accessed(ROOT_INO).unwrap());
    }
}

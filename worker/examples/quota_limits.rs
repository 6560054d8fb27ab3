//! Sets quota limits or grace times in an (unmounted) ext4 image with the
//! engine, as setquota would on a kernel mount (quotactl cannot reach a
//! FUSE mount, and e2fsprogs has no command for it). Used by
//! tests/tests/quota.rs.
//!
//! quota_limits IMAGE user|group|project ID BSOFT_KIB BHARD_KIB ISOFT IHARD
//! quota_limits IMAGE grace user|group|project BLOCK_SECS INODE_SECS

use std::sync::Arc;

use safemount_worker::ext4::{Ext4, OpenOptions, QuotaLimits, QuotaType};
use safemount_worker::io::FdDevice;

fn kind(s: &str) -> Result<QuotaType, String> {
    match s {
        "user" => Ok(QuotaType::User),
        "group" => Ok(QuotaType::Group),
        "project" => Ok(QuotaType::Project),
        _ => Err(format!("unknown quota type {s:?}")),
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn run(args: &[String]) -> Result<(), String> {
    let [image, rest @ ..] = args else {
        return Err("usage: quota_limits IMAGE ...".into());
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("{image}: {e}"))?;
    let dev = FdDevice::new(file.into()).map_err(|e| e.to_string())?;
    let fs = Ext4::open(
        Arc::new(dev),
        OpenOptions {
            read_only: false,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    if fs.info().read_only {
        return Err("the engine serves this image read-only".into());
    }
    let r = match rest {
        [g, t, b, i] if g == "grace" => fs.set_quota_grace(kind(t)?, num(b)?, num(i)?),
        [t, id, bs, bh, is, ih] => fs.set_quota_limits(
            kind(t)?,
            num(id)?,
            QuotaLimits {
                block_soft_kib: num(bs)?,
                block_hard_kib: num(bh)?,
                inode_soft: num(is)?,
                inode_hard: num(ih)?,
            },
        ),
        _ => return Err("bad arguments".into()),
    };
    let done = fs.shutdown();
    r.map_err(|e| e.to_string())?;
    done.map_err(|e| e.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("quota_limits: {e}");
        std::process::exit(1);
    }
}

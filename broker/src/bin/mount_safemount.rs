//! mount.safemount (built as `mount_safemount`: cargo allows no `.` in a
//! binary name; packaging installs it as /sbin/mount.safemount): the
//! helper mount(8) runs for `mount -t safemount SPEC
//! DIR` and for fstab lines of type `safemount`, as
//! `mount.safemount SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`
//! (mount(8), "External helpers"). It asks safemountd for the mount, like
//! `safemount mount`: an image file is opened here with the caller's
//! rights and its fd passed, a block device is opened by the broker.
//!
//! mount(8) passes `-o rw` when no options are given; fstab-only options
//! (`nofail`, `noauto`, ...) reach the broker, which ignores them; `x-*`
//! options are stripped by mount(8) already. `umount DIR` needs no helper:
//! umount(8) calls umount2, the worker then exits and the broker cleans up.
//!
//! Exit status as mount(8) documents for helpers: 0 success, 1 bad usage
//! or not authorized, 2 system error (broker unreachable), 32 mount
//! failure.

use std::path::PathBuf;

use safemount_broker::DEFAULT_SOCKET;
use safemount_broker::client::{ClientError, Connection};
use safemount_proto::ErrorKind;

const USAGE: &str = "usage: mount.safemount SOURCE DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]";

/// mount(8)'s helper exit codes.
mod status {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 1;
    pub const SYSTEM: i32 = 2;
    pub const FAILURE: i32 = 32;
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Invocation {
    source: PathBuf,
    dir: PathBuf,
    options: String,
    fake: bool,
    verbose: bool,
}

/// Parses mount(8)'s helper command line. Flags may come before, between
/// or after the two positional arguments; `-o` and `-t` and `-N` take a
/// value (attached or as the next argument).
fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut inv = Invocation::default();
    let mut positional = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        i += 1;
        if arg == "--" {
            positional.extend(args.get(i..).unwrap_or(&[]).iter().cloned());
            break;
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            positional.push(arg.clone());
            continue;
        };
        for (at, c) in flags.char_indices() {
            match c {
                's' | 'n' => {}
                'f' => inv.fake = true,
                'v' => inv.verbose = true,
                'o' | 't' | 'N' => {
                    let rest = flags.get(at + 1..).unwrap_or("");
                    let value = if rest.is_empty() {
                        let v = args.get(i).ok_or_else(|| format!("-{c} needs a value"))?;
                        i += 1;
                        v.clone()
                    } else {
                        rest.to_owned()
                    };
                    match c {
                        'o' => options.push(value),
                        't' if value != "safemount" && value != "fuse.safemount" => {
                            return Err(format!("unexpected filesystem type {value:?}"));
                        }
                        _ => {}
                    }
                    break;
                }
                other => return Err(format!("unknown flag -{other}")),
            }
        }
    }
    let mut positional = positional.into_iter();
    match (positional.next(), positional.next(), positional.next()) {
        (Some(s), Some(d), None) => {
            inv.source = PathBuf::from(s);
            inv.dir = PathBuf::from(d);
        }
        _ => return Err("expected exactly SOURCE and DIR".to_owned()),
    }
    inv.options = options.join(",");
    Ok(inv)
}

fn exit_status(e: &ClientError) -> i32 {
    match e {
        ClientError::Connect { .. } | ClientError::Proto(_) | ClientError::Unexpected => {
            status::SYSTEM
        }
        ClientError::Broker {
            kind: ErrorKind::NotAuthorized,
            ..
        } => status::USAGE,
        _ => status::FAILURE,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        std::process::exit(status::OK);
    }
    let inv = match parse(&args) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("mount.safemount: {e}\n{USAGE}");
            std::process::exit(status::USAGE);
        }
    };
    if inv.fake {
        std::process::exit(status::OK);
    }
    let socket = std::env::var_os("SAFEMOUNT_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let result = Connection::connect(&socket)
        .and_then(|c| c.mount(&inv.source, Some(&inv.dir), &inv.options));
    match result {
        Ok((at, label)) => {
            if inv.verbose {
                println!(
                    "mount.safemount: {} mounted on {} (label {label:?})",
                    inv.source.display(),
                    at.display()
                );
            }
            std::process::exit(status::OK);
        }
        Err(e) => {
            let msg: String = e
                .to_string()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            eprintln!("mount.safemount: {msg}");
            std::process::exit(exit_status(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn mount8_argv() {
        let inv = p(&["/img", "/mnt", "-o", "ro,nofail"]).unwrap();
        assert_eq!(inv.source, PathBuf::from("/img"));
        assert_eq!(inv.dir, PathBuf::from("/mnt"));
        assert_eq!(inv.options, "ro,nofail");
        let inv = p(&[
            "-sv",
            "/img",
            "-oro",
            "/mnt",
            "-t",
            "safemount",
            "-o",
            "noatime",
        ])
        .unwrap();
        assert_eq!(inv.options, "ro,noatime");
        assert!(inv.verbose && !inv.fake);
        assert!(p(&["-f", "a", "b"]).unwrap().fake);
        assert!(p(&["-N", "/proc/1/ns/mnt", "a", "b"]).is_ok());
    }

    #[test]
    fn bad_argv() {
        assert!(p(&["/img"]).is_err());
        assert!(p(&["a", "b", "c"]).is_err());
        assert!(p(&["a", "b", "-o"]).is_err());
        assert!(p(&["a", "b", "-x"]).is_err());
        assert!(p(&["a", "b", "-t", "ext4"]).is_err());
    }
}

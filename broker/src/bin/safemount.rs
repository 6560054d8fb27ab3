//! safemount: the client. Mount, unmount and list through safemountd.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use safemount_broker::DEFAULT_SOCKET;
use safemount_broker::client::{self, ClientError, Connection, exit};

const LONG_ABOUT: &str = "\
Mounts ext2/3/4 filesystems from untrusted disks and images through \
safemountd: the filesystem is parsed by a sandboxed, unprivileged worker, \
never by a privileged process.

Mounts are read-only unless `-o rw` is given, and always nosuid,nodev and \
noexec (unless `-o exec`). Without a mount point, the broker creates \
/run/media/$USER/<label> and removes it on unmount. Image files are locked \
(`-o locking=`): a second mount or another program's conflicting lock is \
refused as busy.

`safemount list` shows SOURCE, MOUNTPOINT, OWNER (user name), STATE, the \
worker's PID and the first ERROR it met while serving (a device failure, a \
lost write: the mount is then read-only); `--json` prints the same as JSON.

Exit status:
  0  success
  1  internal error in the broker
  2  bad command line
  3  invalid request (unknown option, mount point not a directory, ...)
  4  not authorized
  5  busy (device in use, already mounted, target is busy)
  6  filesystem refused (corrupt, unsupported feature, ...)
  7  not found (no such source or mount point, not mounted by safemount)
  8  cannot reach safemountd, or it answered nonsense
  9  cannot open or inspect the source locally";

#[derive(Debug, Parser)]
#[command(version, about = "Mount untrusted ext2/3/4 filesystems safely", long_about = LONG_ABOUT)]
struct Args {
    /// The broker's socket.
    #[arg(long, env = "SAFEMOUNT_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a block device or image file; prints the mount point.
    Mount {
        /// Block device (opened by the broker) or image file (opened here).
        source: PathBuf,
        /// An existing empty directory you own. Default: a new directory
        /// /run/media/$USER/<label> (removed again on unmount).
        mountpoint: Option<PathBuf>,
        /// Comma-separated options: ro (default), rw, exec, noexec
        /// (default), relatime (default), strictatime, noatime,
        /// nodiratime, diratime, lazytime (ignored),
        /// errors=continue|remount-ro|panic,
        /// locking=auto|on|off|posix (images: auto), defaults; fstab-only
        /// options (nofail, auto, noauto, user, users, _netdev, x-*) are
        /// ignored. Always nosuid,nodev.
        #[arg(short = 'o', long = "options", default_value = "")]
        options: String,
    },
    /// Unmount a filesystem mounted by safemount.
    Unmount {
        mountpoint: PathBuf,
        /// Then flush the drive and power it off, like `udisksctl
        /// power-off` (refused, with nothing unmounted, while another
        /// partition of the drive is mounted).
        #[arg(long)]
        power_off: bool,
    },
    /// List safemount mounts (root sees all; others see their own).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match run(args) {
        Ok(()) => std::process::exit(exit::OK),
        Err(e) => {
            eprintln!("safemount: {}", one_line(&e.to_string()));
            std::process::exit(e.exit_code());
        }
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn run(args: Args) -> Result<(), ClientError> {
    let conn = Connection::connect(&args.socket)?;
    match args.command {
        Command::Mount {
            source,
            mountpoint,
            options,
        } => {
            let (at, _label) = conn.mount(&source, mountpoint.as_deref(), &options)?;
            println!("{}", at.display());
        }
        Command::Unmount {
            mountpoint,
            power_off: false,
        } => conn.unmount(&mountpoint)?,
        Command::Unmount {
            mountpoint,
            power_off: true,
        } => println!("{}", conn.unmount_power_off(&mountpoint)?.describe()),
        Command::List { json } => {
            let mounts = conn.list()?;
            if json {
                match serde_json::to_string_pretty(&mounts) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("safemount: cannot format JSON: {e}");
                        std::process::exit(exit::INTERNAL);
                    }
                }
            } else {
                print!(
                    "{}",
                    client::format_table(&mounts, |uid| {
                        match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                            Ok(Some(u)) => u.name,
                            _ => uid.to_string(),
                        }
                    })
                );
            }
        }
    }
    Ok(())
}

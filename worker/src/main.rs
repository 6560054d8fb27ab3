//! safemount-worker: spawned by safemountd, one per mount.
//!
//! Normal mode takes no arguments: fd 3 is the broker's SOCK_SEQPACKET
//! socket and the protocol of `safemount_proto` (Start, Probed/Refused,
//! Serve, Serving) drives everything; see `safemount_worker::serve`.
//!
//! Hidden test mode: `--sandbox-selftest WHAT --uid U --gid G` enters the
//! sandbox and makes one forbidden call (see `sandbox::selftest`).

use std::process::ExitCode;
use std::sync::LazyLock;

use safemount_worker::logging::DroppingWriter;
use safemount_worker::sandbox;

/// Exit code for a bad command line.
const EXIT_USAGE: u8 = 2;

enum Mode {
    Serve,
    SelfTest { what: String, uid: u32, gid: u32 },
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    if args.is_empty() {
        return Ok(Mode::Serve);
    }
    let mut what = None;
    let mut uid = None;
    let mut gid = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--sandbox-selftest" => what = Some(value(arg)?),
            "--uid" => uid = Some(parse_id(&value(arg)?)?),
            "--gid" => gid = Some(parse_id(&value(arg)?)?),
            other => {
                return Err(format!(
                    "unexpected argument {other:?} (the worker is started by safemountd)"
                ));
            }
        }
    }
    match (what, uid, gid) {
        (Some(what), Some(uid), Some(gid)) => Ok(Mode::SelfTest { what, uid, gid }),
        _ => Err("--sandbox-selftest needs --uid and --gid".to_owned()),
    }
}

fn parse_id(s: &str) -> Result<u32, String> {
    s.parse().map_err(|_| format!("invalid id {s:?}"))
}

/// The log's writer: stderr, lines that do not fit dropped and counted.
static LOG: LazyLock<DroppingWriter<std::io::Stderr>> =
    LazyLock::new(|| DroppingWriter::new(std::io::stderr()));

fn main() -> ExitCode {
    // Logs go to stderr (the broker's log stream); stdout is /dev/null and
    // is closed by the sandbox. No environment: the level is fixed.
    tracing_subscriber::fmt()
        .with_writer(|| &*LOG)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        // A failed write would be reported with eprintln! to the same
        // stderr, and a failed eprintln! panics: with the broker gone
        // (EPIPE) that would end the worker at its next line.
        .log_internal_errors(false)
        .init();
    // A panic anywhere ends the whole worker: a FUSE thread that died
    // would leave its request unanswered and the mount half alive. The
    // broker sees the worker die and detaches the mount.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(a) => {
            eprintln!("safemount-worker: argument {a:?} is not UTF-8");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match parse_args(&args) {
        Ok(Mode::Serve) => safemount_worker::serve::run(),
        Ok(Mode::SelfTest { what, uid, gid }) => sandbox::selftest::run(&what, uid, gid),
        Err(e) => {
            eprintln!("safemount-worker: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

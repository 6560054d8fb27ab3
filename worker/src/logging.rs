//! Where the worker's log lines go: stderr, a pipe to the broker that the
//! broker made non-blocking (supervise.rs). A line that does not fit while
//! nobody reads the pipe (a broker restarting, a stalled journal) is
//! dropped, never waited for: the thread logging may be a FUSE thread.
//! How many were dropped is said in the next line that fits.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;

/// Writes each log line with one write(2) to `fd`, dropping (and counting)
/// what the pipe cannot take now.
pub struct DroppingWriter<F> {
    fd: F,
    dropped: AtomicU64,
}

impl<F: AsFd> DroppingWriter<F> {
    pub const fn new(fd: F) -> Self {
        Self {
            fd,
            dropped: AtomicU64::new(0),
        }
    }

    /// Writes `line` whole or not at all (a pipe takes up to 4 KiB at
    /// once); a longer line may be cut where the pipe filled.
    fn write_line(&self, line: &[u8]) -> io::Result<usize> {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let notice = format!("{dropped} log lines dropped: nobody read the log\n");
            if !matches!(self.write_once(notice.as_bytes()), Ok(true)) {
                self.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
        }
        loop {
            match nix::unistd::write(self.fd.as_fd(), line) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    // Said to be written: the line is gone, not failed.
                    return Ok(line.len());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One write(2) of `bytes`: true if all of it went.
    fn write_once(&self, bytes: &[u8]) -> io::Result<bool> {
        loop {
            match nix::unistd::write(self.fd.as_fd(), bytes) {
                Ok(n) => return Ok(n == bytes.len()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl<F: AsFd> Write for &DroppingWriter<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_line(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::io::Read;

    #[test]
    fn lines_that_do_not_fit_are_dropped_and_counted() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        fcntl(&writer, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        fcntl(&reader, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let log = DroppingWriter::new(writer);
        // Page-sized lines, so a full pipe has no room left for anything.
        let line = [b'x'; 4095]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        // Fill the pipe, then two more lines: dropped, never an error.
        let mut written = 0usize;
        while log.dropped.load(Ordering::Relaxed) == 0 {
            (&log).write_all(&line).unwrap();
            written += 1;
        }
        for _ in 0..2 {
            (&log).write_all(&line).unwrap();
        }
        assert_eq!(log.dropped.load(Ordering::Relaxed), 3);
        let mut reader = std::fs::File::from(reader);
        let mut drained = Vec::new();
        let _ = reader.read_to_end(&mut drained);
        assert_eq!(
            drained.len(),
            (written - 1) * line.len(),
            "whole lines only"
        );

        (&log).write_all(b"next\n").unwrap();
        let mut after = Vec::new();
        let _ = reader.read_to_end(&mut after);
        assert_eq!(after, b"3 log lines dropped: nobody read the log\nnext\n");
        assert_eq!(log.dropped.load(Ordering::Relaxed), 0);
    }
}

//! Helpers shared by the tests of the `demi` command.

use std::io::BufRead;
use std::time::Duration;

/// The first line a child writes to `out` (empty if none within 30 s); the
/// rest is drained in the background so the child never blocks on a full pipe.
pub fn first_line(out: std::process::ChildStdout) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(out);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default()
}

//! `DEMI_PRELOAD_STATS=FILE`: at exit, one line of counters is written to
//! FILE (appended): what demi, not the kernel, carried for the program. The
//! tests read it to prove that a program was really served by demi.

use std::io::Write;

extern "C" fn write_stats() {
    let _in = crate::guard::Inside::enter();
    let Ok(path) = std::env::var("DEMI_PRELOAD_STATS") else { return };
    let Some(st) = crate::state::lock_within(std::time::Duration::from_millis(200)) else {
        log::warn!("demi preload: no stats line: the state stayed locked at exit");
        return;
    };
    let s = &st.stats;
    let line = format!(
        "pid={} libos={} sockets={} accepted={} connected={} bytes_in={} bytes_out={} listening={}\n",
        std::process::id(),
        st.libos().map_or("-", |os| os.name()),
        s.sockets,
        s.accepted,
        s.connected,
        s.bytes_in,
        s.bytes_out,
        if s.listening.is_empty() { "-".to_string() } else { s.listening.join(",") }
    );
    log::info!("demi preload: {}", line.trim_end());
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Registers the exit hook once (when the libOS starts).
pub fn at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a function with the C signature atexit expects.
        unsafe { libc::atexit(write_stats) };
    });
}

//! The C ABI, tested from C: compiles the programs in `tests/c/` and
//! `examples/c/` against `include/` and the built library, runs them, and
//! checks they pass. One `#[test]` per program, so a failure names it.
//!
//! The C programs are built with warnings as errors and with AddressSanitizer
//! and UndefinedBehaviorSanitizer (`-fno-sanitize-recover=all`, so any UB
//! report fails the run). They link against `libdemi.so` from the same
//! target directory as this test binary (`cargo test --release` -> target/release),
//! which `cargo build --release` (the Makefile's job) must have produced;
//! one program is also linked against `libdemi.a`.
//!
//! Leak checking stays on. The one exception is an environment where
//! LeakSanitizer itself cannot run (it needs ptrace-like access to the
//! process; some containers forbid that): then the run is repeated once with
//! `detect_leaks=0`, and a note says so.

mod common;
use common::lib_dir;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest any C program may run before it is killed (by its pid).
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Flags every C test is compiled with.
const WARNINGS: &[&str] = &["-Wall", "-Wextra", "-Werror", "-Wpedantic"];
const SANITIZERS: &[&str] =
    &["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where compiled C programs go.
fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_abi");
    std::fs::create_dir_all(&d).expect("create the output directory");
    d
}

#[derive(Clone, Copy, PartialEq)]
enum Lang {
    C,
    Cxx,
}

#[derive(Clone, Copy, PartialEq)]
enum Link {
    Shared,
    Static,
}

/// A compiled C program. Its file name carries this process's id, so tests
/// running at the same time (here or in another `cargo test`) never
/// overwrite each other's binaries. It is deleted when dropped, unless the
/// test is failing (then it stays for debugging).
struct Binary(PathBuf);

impl std::ops::Deref for Binary {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Compiles one C source into `out_dir()/<name>-<pid>`, panicking with the
/// compiler's output if it fails. `name` must be unique among the tests.
fn compile(source: &str, name: &str, lang: Lang, link: Link) -> Binary {
    let lib = lib_dir();
    let out = out_dir().join(format!("{name}-{}", std::process::id()));
    let mut cmd = match lang {
        Lang::C => {
            let mut c = Command::new("cc");
            c.arg("-std=c11");
            c
        }
        Lang::Cxx => {
            let mut c = Command::new("g++");
            // C++20 for the designated initialisers Demikernel users write.
            c.args(["-x", "c++", "-std=c++20"]);
            c
        }
    };
    cmd.args(WARNINGS).args(SANITIZERS).arg("-pthread");
    cmd.arg("-I").arg(repo().join("include"));
    cmd.arg(repo().join(source)).arg("-o").arg(&out);
    // The language flag must not apply to the library arguments that follow.
    if lang == Lang::Cxx {
        cmd.args(["-x", "none"]);
    }
    match link {
        Link::Shared => {
            cmd.arg(format!("-L{}", lib.display()));
            cmd.arg("-ldemi");
            cmd.arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        Link::Static => {
            cmd.arg(format!("-L{}", lib.display()));
            cmd.args(["-Wl,-Bstatic", "-ldemi", "-Wl,-Bdynamic"]);
            cmd.args(system_libs(&lib));
        }
    }
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run the compiler for {source}: {e}"));
    assert!(
        o.status.success(),
        "compiling {source} failed:\n{:?}\n{}{}",
        cmd,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Binary(out)
}

/// The system libraries a static link of libdemi.a needs: those libdemi.so
/// was linked with (its DT_NEEDED entries, which follow the cargo features
/// built: DPDK, rdma-core...), as `-l` flags. `make install` writes the same
/// list into demi.pc's Libs.private.
fn system_libs(lib: &Path) -> Vec<String> {
    let o = Command::new("readelf").arg("-d").arg(lib.join("libdemi.so")).output().expect("run readelf (binutils)");
    assert!(o.status.success(), "readelf -d libdemi.so: {}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let libs: Vec<String> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_owned()))
        .filter_map(|soname| Some(format!("-l{}", soname.strip_prefix("lib")?.split_once(".so")?.0)))
        .collect();
    assert!(libs.iter().any(|l| l == "-lc"), "unexpected readelf output:\n{text}");
    libs
}

/// What a finished program did.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn show(&self) -> String {
        format!("exit: {}\n--- stdout ---\n{}--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }

    fn assert_ok(&self, what: &str) {
        assert!(self.status.success(), "{what} failed\n{}", self.show());
    }

    /// LeakSanitizer could not run at all (not a leak: an environment limit).
    fn lsan_unavailable(&self) -> bool {
        self.stderr.contains("LeakSanitizer has encountered a fatal error")
            || self.stderr.contains("LeakSanitizer does not work under ptrace")
    }
}

/// Sets the environment every C program runs with: catnap, and sanitizer
/// options that make reports fatal and readable.
fn c_env(cmd: &mut Command, leaks: bool) {
    cmd.env("LIBOS", "catnap");
    cmd.env(
        "ASAN_OPTIONS",
        format!("detect_leaks={}:abort_on_error=0:detect_stack_use_after_return=1", u8::from(leaks)),
    );
    cmd.env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1");
}

fn spawn(bin: &Path, args: &[&str], leaks: bool) -> Child {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    c_env(&mut cmd, leaks);
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// Reads a pipe to the end on a thread (so a chatty child never blocks on a
/// full pipe), line by line: each line also goes to `lines` if given.
fn drain(pipe: impl Read + Send + 'static, lines: Option<mpsc::Sender<String>>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut r = BufReader::new(pipe);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(tx) = &lines {
                let _ = tx.send(line.clone());
            }
            all.push_str(&line);
            line.clear();
        }
        all
    })
}

/// Waits for a child for at most `limit`; kills it (by its pid) if it runs
/// longer. Collects its output.
fn finish(
    mut child: Child,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
    limit: Duration,
) -> Ran {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = child.kill();
            let s = child.wait().expect("wait after kill");
            let mut ran = Ran { status: s, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
            ran.stderr.push_str(&format!("\n[killed after {} s]\n", limit.as_secs()));
            panic!("a C program ran too long\n{}", ran.show());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ran { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

fn run_once(bin: &Path, args: &[&str], leaks: bool) -> Ran {
    let mut child = spawn(bin, args, leaks);
    let out = drain(child.stdout.take().unwrap(), None);
    let err = drain(child.stderr.take().unwrap(), None);
    finish(child, out, err, RUN_LIMIT)
}

/// Runs a compiled program with leak checking (see the module docs for the
/// one fallback) and returns what it did.
fn run(bin: &Path, args: &[&str]) -> Ran {
    let ran = run_once(bin, args, true);
    if !ran.status.success() && ran.lsan_unavailable() {
        eprintln!("note: LeakSanitizer cannot run here; rerunning {} with detect_leaks=0", bin.display());
        return run_once(bin, args, false);
    }
    ran
}

/// A loopback port that is free for both TCP and UDP right now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind a TCP probe");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

fn compile_and_run(source: &str, name: &str, lang: Lang, link: Link, args: &[&str], want_stdout: &str) -> Ran {
    let bin = compile(source, name, lang, link);
    let ran = run(&bin, args);
    check_passed(source, &ran, want_stdout);
    ran
}

/// A test program passed: exit 0, its success line, no UBSan report.
fn check_passed(source: &str, ran: &Ran, want_stdout: &str) {
    ran.assert_ok(source);
    assert!(ran.stdout.contains(want_stdout), "{source}: stdout lacks {want_stdout:?}\n{}", ran.show());
    assert!(!ran.stderr.contains("runtime error"), "{source}: UBSan report\n{}", ran.show());
}

#[test]
fn layout() {
    let ran = compile_and_run("tests/c/layout.c", "layout", Lang::C, Link::Shared, &[], "layout: all");
    // Spot-check that the facts were really printed, not just the summary.
    assert!(ran.stdout.contains("sizeof(demi_qresult_t)"), "{}", ran.show());
}

#[test]
fn errors() {
    compile_and_run("tests/c/errors.c", "errors", Lang::C, Link::Shared, &[], "errors: every error case");
}

#[test]
fn threads() {
    compile_and_run(
        "tests/c/threads.c",
        "threads",
        Lang::C,
        Link::Shared,
        &[],
        "threads: 3 threads x 300 rounds verified",
    );
}

#[test]
fn pingpong() {
    compile_and_run("tests/c/pingpong.c", "pingpong", Lang::C, Link::Shared, &[], "pingpong: all exchanges verified");
}

#[test]
fn pingpong_linked_statically() {
    let bin = compile("tests/c/pingpong.c", "pingpong-static", Lang::C, Link::Static);
    // Really static: the program does not load libdemi.so.
    let ldd = Command::new("ldd").arg(&*bin).output().expect("run ldd");
    let deps = String::from_utf8_lossy(&ldd.stdout);
    assert!(!deps.contains("libdemi"), "statically linked program still loads libdemi:\n{deps}");
    let ran = run(&bin, &[]);
    check_passed("tests/c/pingpong.c (static)", &ran, "pingpong: all exchanges verified");
}

#[test]
fn demikernel_compat_as_c() {
    let port = free_port().to_string();
    compile_and_run(
        "tests/c/demikernel_compat.c",
        "demikernel_compat",
        Lang::C,
        Link::Shared,
        &[&port],
        "demikernel_compat (C): TCP and UDP echo ok",
    );
}

#[test]
fn demikernel_compat_as_cxx() {
    let port = free_port().to_string();
    compile_and_run(
        "tests/c/demikernel_compat.c",
        "demikernel_compat_cxx",
        Lang::Cxx,
        Link::Shared,
        &[&port],
        "demikernel_compat (C++): TCP and UDP echo ok",
    );
}

/// Runs an example's server and client as two processes over loopback and
/// returns what both did. The client starts once the server has printed
/// `ready_word` (it is listening). `bin_name` must be unique among the tests.
fn run_example(name: &str, bin_name: &str, ready_word: &str, client_args: &[&str]) -> (Ran, Ran) {
    let bin = compile(&format!("examples/c/{name}.c"), bin_name, Lang::C, Link::Shared);

    // The port comes from free_port(), which closes its probe sockets; in the
    // rare case something takes the port before the server binds it, try
    // another one.
    for attempt in 1..=3 {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut server = spawn(&bin, &["server", &addr, "--idle", "20"], true);
        let (tx, rx) = mpsc::channel();
        let s_out = drain(server.stdout.take().unwrap(), Some(tx));
        let s_err = drain(server.stderr.take().unwrap(), None);
        let ready_by = Instant::now() + Duration::from_secs(20);
        let ready = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains(ready_word) => break true,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < ready_by => {}
                Err(_) => break false,
            }
        };
        if !ready {
            let _ = server.kill();
            let ran = finish(server, s_out, s_err, RUN_LIMIT);
            if attempt < 3 && ran.stderr.contains("Address already in use") {
                continue;
            }
            panic!("{name} server never became ready\n{}", ran.show());
        }

        let mut args = vec!["client", addr.as_str()];
        args.extend_from_slice(client_args);
        let client = run(&bin, &args);
        if !client.status.success() {
            let _ = server.kill();
        }
        let server = finish(server, s_out, s_err, RUN_LIMIT);
        client.assert_ok(&format!("{name} client"));
        server.assert_ok(&format!("{name} server"));
        return (client, server);
    }
    unreachable!("the loop returns or panics")
}

/// Checks the client's latency table: a header naming the columns and a row
/// of numbers under it, with min <= p50 <= p99 <= max.
fn check_latency_table(client: &Ran, count: u64) {
    let lines: Vec<&str> = client.stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| ["min us", "p50 us", "p99 us", "max us", "mean us"].iter().all(|c| l.contains(c)))
        .unwrap_or_else(|| panic!("no latency header\n{}", client.show()));
    let row: Vec<f64> = lines
        .get(header + 1)
        .unwrap_or_else(|| panic!("no latency row\n{}", client.show()))
        .split_whitespace()
        .map(|x| x.parse().unwrap_or_else(|_| panic!("latency row has {x:?}\n{}", client.show())))
        .collect();
    assert_eq!(row.len(), 6, "latency row\n{}", client.show());
    assert_eq!(row[0] as u64, count, "round trips\n{}", client.show());
    let (min, p50, p99, max) = (row[1], row[2], row[3], row[4]);
    assert!(0.0 < min && min <= p50 && p50 <= p99 && p99 <= max, "latencies out of order\n{}", client.show());
    assert!(client.stdout.contains("every byte verified"), "{}", client.show());
}

#[test]
fn example_tcp_pingpong() {
    let (client, server) = run_example(
        "tcp-pingpong",
        "tcp-pingpong",
        "listening",
        &["--count", "300", "--size", "1000", "--bind", "127.0.0.1"],
    );
    check_latency_table(&client, 300);
    assert!(server.stdout.contains("echoed 300000 bytes"), "server totals\n{}", server.show());
}

#[test]
fn example_tcp_pingpong_big_messages() {
    // Messages larger than the kernel's socket buffers: pops return pieces.
    let (client, _) =
        run_example("tcp-pingpong", "tcp-pingpong-big", "listening", &["--count", "3", "--size", "3000000"]);
    check_latency_table(&client, 3);
}

#[test]
fn example_udp_pingpong() {
    let (client, server) = run_example(
        "udp-pingpong",
        "udp-pingpong",
        "ready",
        &["--count", "300", "--size", "1200", "--bind", "127.0.0.1"],
    );
    check_latency_table(&client, 300);
    assert!(server.stdout.contains("goodbye"), "server stopped on the client's goodbye\n{}", server.show());
}

#[test]
fn example_usage_errors_exit_2() {
    for name in ["tcp-pingpong", "udp-pingpong"] {
        let bin = compile(&format!("examples/c/{name}.c"), &format!("{name}-usage"), Lang::C, Link::Shared);
        for args in [
            &["client"][..],
            &["client", "127.0.0.1"],
            &["server", "127.0.0.1:1", "--size", "5"],
            &["x", "127.0.0.1:1"],
        ] {
            let ran = run(&bin, args);
            assert_eq!(ran.status.code(), Some(2), "{name} {args:?}\n{}", ran.show());
            assert!(ran.stderr.contains("usage:"), "{name} {args:?}\n{}", ran.show());
        }
    }
}

#[test]
fn example_client_without_server_fails() {
    let bin = compile("examples/c/tcp-pingpong.c", "tcp-pingpong-noserver", Lang::C, Link::Shared);
    // A bound but not listening port refuses connections.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    drop(holder);
    let ran = run(&bin, &["client", &addr.to_string(), "--count", "1", "--timeout", "5"]);
    assert_eq!(ran.status.code(), Some(1), "{}", ran.show());
    assert!(ran.stderr.contains("connecting failed"), "{}", ran.show());
}

/// `make install-files` into a temporary prefix, then a program built with
/// `pkg-config --cflags --libs demi` against that copy runs.
#[test]
fn installed_copy_builds_with_pkg_config() {
    let lib = lib_dir();
    assert!(
        lib.ends_with("target/release"),
        "make install copies target/release; run this test with `cargo test --release` (found {})",
        lib.display()
    );
    let prefix = out_dir().join(format!("prefix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    // install-files copies without building: `make install` would run cargo,
    // which waits for the lock this `cargo test` holds.
    let o = Command::new("make")
        .current_dir(repo())
        .args(["--no-print-directory", "install-files"])
        .arg(format!("PREFIX={}", prefix.display()))
        .output()
        .expect("run make");
    assert!(
        o.status.success(),
        "make install-files failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for f in [
        "lib/libdemi.so",
        "lib/libdemi.a",
        "lib/pkgconfig/demi.pc",
        "include/demi/libos.h",
        "include/demi/sga.h",
        "include/demi/wait.h",
        "include/demi/types.h",
        "include/demi/cc.h",
        "share/man/man3/demi_connect.3",
        "share/man/man1/demi.1",
    ] {
        assert!(prefix.join(f).is_file(), "make install-files did not install {f}");
    }

    let pc_path = prefix.join("lib/pkgconfig");
    let pkg = |args: &[&str]| -> Vec<String> {
        let o = Command::new("pkg-config")
            .args(args)
            .arg("demi")
            .env("PKG_CONFIG_PATH", &pc_path)
            .output()
            .expect("run pkg-config (installed by make deps)");
        assert!(o.status.success(), "pkg-config {args:?} demi failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().split_whitespace().map(str::to_owned).collect()
    };
    let cflags = pkg(&["--cflags"]);
    let libs = pkg(&["--libs"]);
    assert!(cflags.iter().any(|f| f == &format!("-I{}/include", prefix.display())), "cflags {cflags:?}");
    assert!(libs.iter().any(|f| f == "-ldemi"), "libs {libs:?}");
    assert_eq!(pkg(&["--modversion"]), vec![env!("CARGO_PKG_VERSION").to_string()]);

    // Build from the installed headers and library only: no -I of the source tree.
    let build = |name: &str, libs: &[String]| -> Binary {
        let bin = Binary(out_dir().join(format!("{name}-{}", std::process::id())));
        let o = Command::new("cc")
            .arg("-std=c11")
            .args(WARNINGS)
            .args(&cflags)
            .arg(repo().join("tests/c/demikernel_compat.c"))
            .arg("-o")
            .arg(&*bin)
            .args(libs)
            .output()
            .expect("run cc");
        assert!(
            o.status.success(),
            "building against the installed copy failed ({libs:?}):\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        bin
    };
    let run_installed = |bin: &Binary| -> String {
        let mut child = Command::new(&**bin)
            .arg(free_port().to_string())
            .env("LIBOS", "catnap")
            .env("LD_LIBRARY_PATH", prefix.join("lib"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the program");
        let out = drain(child.stdout.take().unwrap(), None);
        let err = drain(child.stderr.take().unwrap(), None);
        let ran = finish(child, out, err, RUN_LIMIT);
        ran.assert_ok("program built against the installed copy");
        assert!(ran.stdout.contains("TCP and UDP echo ok"), "{}", ran.show());
        let ldd = Command::new("ldd").arg(&**bin).env("LD_LIBRARY_PATH", prefix.join("lib")).output().expect("ldd");
        String::from_utf8_lossy(&ldd.stdout).into_owned()
    };

    // Linked dynamically: it loads the installed libdemi.so.
    let shared = build("compat-installed", &libs);
    let deps = run_installed(&shared);
    let want = format!("{}/lib/libdemi.so", prefix.display());
    assert!(deps.contains(&want), "ldd does not show {want}:\n{deps}");

    // Linked statically with `pkg-config --static --libs`: demi.pc's
    // Libs.private must name every system library libdemi.a needs.
    let static_libs: Vec<String> =
        pkg(&["--static", "--libs"])
            .into_iter()
            .flat_map(|f| {
                if f == "-ldemi" {
                    vec!["-Wl,-Bstatic".to_owned(), f, "-Wl,-Bdynamic".to_owned()]
                } else {
                    vec![f]
                }
            })
            .collect();
    let fixed = build("compat-installed-static", &static_libs);
    let deps = run_installed(&fixed);
    assert!(!deps.contains("libdemi"), "the static build still loads libdemi:\n{deps}");
    let _ = std::fs::remove_dir_all(&prefix);
}

// ---- The C-ABI sequence fuzzer (tests/c/fuzz_abi/) ----

/// Seeds and budget of the short run `cargo test` makes (`make fuzz-abi`
/// runs it long). Each seed takes a few seconds under the sanitizers.
const FUZZ_SEEDS: &[u64] = &[1, 2, 3];
const FUZZ_CALLS: &str = "50000";

/// Builds the fuzzer from every C file of tests/c/fuzz_abi, with the same
/// warnings and sanitizers as the other C tests; `extra` adds sources and
/// linker flags.
fn compile_fuzzer(name: &str, extra: &[&str]) -> Binary {
    let dir = repo().join("tests/c/fuzz_abi");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    assert!(sources.len() >= 2, "no fuzzer sources in {}", dir.display());
    let lib = lib_dir();
    let out = Binary(out_dir().join(format!("{name}-{}", std::process::id())));
    let o = Command::new("cc")
        .arg("-std=c11")
        .args(WARNINGS)
        .args(SANITIZERS)
        .arg("-I")
        .arg(repo().join("include"))
        .args(&sources)
        .args(extra)
        .arg("-o")
        .arg(&*out)
        .arg(format!("-L{}", lib.display()))
        .arg("-ldemi")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-pthread")
        .output()
        .expect("run cc");
    assert!(
        o.status.success(),
        "compiling the fuzzer failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn fuzz_abi_fixed_seeds() {
    let bin = compile_fuzzer("fuzz_abi", &[]);
    for seed in FUZZ_SEEDS {
        let seed = seed.to_string();
        let ran = run(&bin, &["--seed", &seed, "--calls", FUZZ_CALLS]);
        let what = format!("fuzz_abi --seed {seed} --calls {FUZZ_CALLS}");
        check_passed(&what, &ran, "fuzz_abi: no violations");
        // The figures were printed and the budget was spent.
        let figures = ran
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("fuzz_abi: seed {seed}:")))
            .unwrap_or_else(|| panic!("{what}: no figures\n{}", ran.show()));
        let calls: u64 = figures
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: unreadable figures {figures:?}"));
        assert!(calls >= FUZZ_CALLS.parse().unwrap(), "{what}: only {calls} calls\n{}", ran.show());
        assert!(figures.contains(" 0 violations"), "{what}: {figures}");
    }
}

/// The fuzzer notices a broken library: linked with the deliberately wrong
/// calls of tests/c/fuzz_abi_mutants.c (one defect at a time, picked by
/// FUZZ_MUTANT), each run must stop with a violation naming the defect.
#[test]
fn fuzz_abi_catches_broken_calls() {
    let mutants = repo().join("tests/c/fuzz_abi_mutants.c");
    let wraps = "-Wl,--wrap=demi_close,--wrap=demi_accept,--wrap=demi_wait,--wrap=demi_wait_next_n";
    let bin = compile_fuzzer("fuzz_abi_mutants", &[mutants.to_str().expect("utf-8 path"), wraps]);
    // Unbroken, the same binary passes: the wrappers themselves change nothing.
    let ran = run(&bin, &["--seed", "1", "--calls", "3000"]);
    check_passed("fuzz_abi with pass-through wrappers", &ran, "fuzz_abi: no violations");
    for (mutant, want) in [
        ("errno", "demi_close returned EINVAL"),
        ("outparam", "wrote"),
        ("data", "byte"),
        ("token", "not live"),
        ("order", "in the order issued"),
        ("cancel", "ECONNRESET"),
        ("fdleak", "descriptors"),
    ] {
        let mut cmd = Command::new(&*bin);
        cmd.args(["--seed", "1", "--calls", "30000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // No leak check: a violation exits from deep inside the run, with
        // buffers still held (LeakSanitizer would change the exit status).
        c_env(&mut cmd, false);
        cmd.env("FUZZ_MUTANT", mutant);
        let mut child = cmd.spawn().expect("start the fuzzer");
        let out = drain(child.stdout.take().unwrap(), None);
        let err = drain(child.stderr.take().unwrap(), None);
        let ran = finish(child, out, err, RUN_LIMIT);
        assert_eq!(ran.status.code(), Some(1), "mutant {mutant}: the fuzzer did not fail\n{}", ran.show());
        let line = ran.stderr.lines().find(|l| l.starts_with("VIOLATION")).unwrap_or("");
        assert!(line.contains(want), "mutant {mutant}: want a violation about {want:?}\n{}", ran.show());
    }
}

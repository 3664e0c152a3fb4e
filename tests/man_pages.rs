//! The man pages: `make install-man` installs one roff page per call of the
//! C API (`share/man/man3/demi_<call>.3`) and `share/man/man1/demi.1`, each
//! generated from its man/*.md; each renders without a groff warning, with
//! its NAME line where whatis reads it, and `man demi_connect` finds it
//! under the install prefix. A page that documents several calls gives the
//! others `.so` pages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder under target/ removed when the test passes.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = repo().join("target").join(format!("man-pages-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?} (make deps installs it): {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `man NAME` from MANPATH=`manpath` only, as plain text (wide lines, so
/// that few words are hyphenated).
fn man(manpath: &Path, name: &str) -> String {
    let o = run(Command::new("man")
        .args(["--warnings", "-P", "cat", name])
        .env("MANPATH", manpath)
        .env("MANWIDTH", "200")
        .env("LC_ALL", "C.UTF-8"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.trim().is_empty(), "man {name} warned: {err}");
    String::from_utf8(o.stdout).unwrap()
}

/// `text` with every run of spaces as one (man justifies lines).
fn squeeze(text: &str) -> String {
    text.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The calls documented in man/: (file stem, section).
fn sources() -> Vec<(String, &'static str)> {
    let mut pages: Vec<(String, &str)> = std::fs::read_dir(repo().join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter_map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            match stem.as_str() {
                "demi" => Some((stem, "1")),
                s if s.starts_with("demi_") => Some((stem, "3")),
                "demi-preload" => Some((stem, "7")),
                s if s.starts_with("demi-") => Some((stem, "1")),
                _ => None,
            }
        })
        .collect();
    pages.sort();
    pages
}

/// The first line of a page's Name section, as written in the .md.
fn name_line(stem: &str) -> String {
    let md = std::fs::read_to_string(repo().join("man").join(format!("{stem}.md"))).unwrap();
    let after = md.split("## Name").nth(1).unwrap_or_else(|| panic!("{stem}.md has no Name section"));
    after.lines().map(str::trim).find(|l| !l.is_empty()).unwrap().replace('`', "")
}

#[test]
fn every_page_is_installed_and_renders() {
    let prefix = TempDir::new("install");
    run(Command::new("make")
        .current_dir(repo())
        .args(["--no-print-directory", "install-man"])
        .arg(format!("PREFIX={}", prefix.0.display())));
    let manpath = prefix.0.join("share/man");
    let pages = sources();
    assert!(pages.len() >= 20, "man/ should document demi and every call: {pages:?}");
    for (stem, section) in &pages {
        let page = manpath.join(format!("man{section}/{stem}.{section}"));
        assert!(page.is_file(), "make install-man did not install {}", page.display());
        let o = run(Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&page));
        let warnings = String::from_utf8_lossy(&o.stderr);
        assert!(warnings.trim().is_empty(), "groff warns about {}: {warnings}", page.display());
        // whatis/apropos read the NAME line.
        let o = run(Command::new("lexgrog").arg(&page));
        let want = name_line(stem);
        let (names, _) = want.split_once(" - ").unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("\"{names} - ")),
            "lexgrog reads no NAME line `{want}` in {}: {}",
            page.display(),
            String::from_utf8_lossy(&o.stdout)
        );
        let text = man(&manpath, stem);
        let title = format!("{}({section})", stem.to_uppercase());
        assert!(text.starts_with(&title), "man {stem} does not start with {title}:\n{text}");
        for heading in ["NAME", "SYNOPSIS", "DESCRIPTION"] {
            assert!(text.contains(&format!("\n{heading}\n")), "man {stem} has no {heading} section:\n{text}");
        }
    }
    // The text itself, and the references of See Also.
    let text = squeeze(&man(&manpath, "demi_connect"));
    assert!(text.contains("demi_connect - Asynchronously connect a socket I/O queue"), "{text}");
    assert!(text.contains("ECONNREFUSED"), "{text}");
    assert!(text.contains("demi_socket(3)"), "See Also should name demi_socket(3):\n{text}");
    assert!(man(&manpath, "demi").contains("--max-unsent"));
}

/// A page that documents two calls answers `man` for both.
#[test]
fn a_page_for_two_calls_serves_both() {
    let dir = TempDir::new("two");
    let src = dir.0.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let page = "# `demi_first()`\n\n## Name\n\n`demi_first`, `demi_second` - Two calls on one page.\n\n\
                ## Synopsis\n\n```c\nint demi_first(void);\nint demi_second(void);\n```\n\n\
                ## Description\n\nBoth do the same.\n";
    std::fs::write(src.join("demi_first.md"), page).unwrap();
    let out = dir.0.join("man");
    run(Command::new(repo().join("scripts/man-pages")).arg(&out).arg("0.0.0").arg(&src));
    let link = std::fs::read_to_string(out.join("man3/demi_second.3")).expect("a page for demi_second");
    assert_eq!(link.trim(), ".so man3/demi_first.3");
    let text = squeeze(&man(&out, "demi_second"));
    assert!(text.starts_with("DEMI_FIRST(3)"), "{text}");
    assert!(text.contains("demi_first, demi_second - Two calls on one page."), "{text}");
}

//! Every `demi_*` symbol the library exports runs inside the C boundary
//! (`boundary("demi_x", ...)` in src/ffi: a panic becomes ENOTRECOVERABLE
//! instead of unwinding into C). The exported symbols come from the built
//! libdemi.so itself (`nm -D`), so a new export without the boundary, or one
//! that names another call's boundary, fails here.

mod common;
use std::collections::BTreeMap;
use std::process::Command;

/// `extern "C" fn` name -> its body, for every exported function in src/ffi.
fn ffi_functions() -> BTreeMap<String, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("src/ffi") {
        let path = entry.unwrap().path();
        if path.extension().map_or(true, |e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Each `extern "C" fn NAME(` starts a body that lasts until the next one.
        let starts: Vec<usize> = text.match_indices("extern \"C\" fn ").map(|(i, _)| i).collect();
        for (k, &at) in starts.iter().enumerate() {
            let rest = &text[at + "extern \"C\" fn ".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let end = starts.get(k + 1).copied().unwrap_or(text.len());
            out.insert(name, text[at..end].to_string());
        }
    }
    out
}

#[test]
fn every_exported_call_runs_inside_the_boundary() {
    let lib = common::lib_dir().join("libdemi.so");
    let nm = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("run nm (binutils)");
    assert!(nm.status.success(), "nm -D {}: {}", lib.display(), String::from_utf8_lossy(&nm.stderr));
    let exported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("demi_"))
        .map(str::to_string)
        .collect();
    assert!(exported.len() >= 19, "too few demi_* exports in {}: {exported:?}", lib.display());
    let bodies = ffi_functions();
    let mut missing = Vec::new();
    for sym in &exported {
        match bodies.get(sym) {
            Some(body) if body.contains(&format!("boundary(\"{sym}\"")) => {}
            Some(_) => missing.push(format!("{sym}: its body has no boundary(\"{sym}\", ...)")),
            None => missing.push(format!("{sym}: exported but no `extern \"C\" fn {sym}` in src/ffi")),
        }
    }
    assert!(missing.is_empty(), "exported calls outside the panic boundary:\n{}", missing.join("\n"));
}

//! Binds the system's DPDK (Debian 12: 22.11, package libdpdk-dev): bindgen
//! over the rte headers we call, plus a C shim for DPDK's static-inline
//! functions and macros, all compiled with `pkg-config --cflags libdpdk`.
//!
//! Without the `dpdk` feature (the wire formats alone, as fuzz/ builds the
//! crate) there is nothing to bind or link, and bindgen and cc are not even
//! dependencies: the script then does nothing.

#[cfg(feature = "dpdk")]
use std::{env, path::PathBuf, process::Command};

fn main() {
    #[cfg(feature = "dpdk")]
    bind_dpdk();
}

#[cfg(feature = "dpdk")]
fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config").args(args).arg("libdpdk").output().unwrap_or_else(|e| {
        panic!("catnip: cannot run pkg-config ({e}); install pkg-config and libdpdk-dev (scripts/install-deps)")
    });
    if !out.status.success() {
        panic!(
            "catnip: `pkg-config {} libdpdk` failed: {}; install libdpdk-dev (scripts/install-deps libdpdk-dev)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

#[cfg(feature = "dpdk")]
fn bind_dpdk() {
    println!("cargo:rerun-if-changed=src/sys/shim.c");
    println!("cargo:rerun-if-changed=src/sys/shim.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let cflags = pkg_config(&["--cflags"]);

    // The shim: one real symbol per static-inline function or macro we need.
    let mut shim = cc::Build::new();
    shim.file("src/sys/shim.c").opt_level(2).warnings(true).extra_warnings(true);
    for f in &cflags {
        shim.flag(f);
    }
    shim.compile("catnip_shim");

    // Link flags: -L/-l pass through; --as-needed and friends go to the linker.
    for f in pkg_config(&["--libs"]) {
        if let Some(dir) = f.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = f.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        } else if f.starts_with("-Wl,") {
            // --as-needed would drop librte_* that only the shim references.
        } else {
            println!("cargo:rustc-link-arg={f}");
        }
    }

    let bindings = bindgen::Builder::default()
        .header("src/sys/shim.h")
        .clang_args(cflags.iter().filter(|f| !f.starts_with("-march")))
        .allowlist_function("rte_eal_init")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_eth_dev_count_avail")
        .allowlist_function("rte_eth_find_next")
        .allowlist_function("rte_eth_dev_info_get")
        .allowlist_function("rte_eth_dev_configure")
        .allowlist_function("rte_eth_dev_socket_id")
        .allowlist_function("rte_eth_rx_queue_setup")
        .allowlist_function("rte_eth_tx_queue_setup")
        .allowlist_function("rte_eth_dev_start")
        .allowlist_function("rte_eth_dev_stop")
        .allowlist_function("rte_eth_dev_close")
        .allowlist_function("rte_eth_dev_set_mtu")
        .allowlist_function("rte_eth_macaddr_get")
        .allowlist_function("rte_eth_dev_default_mac_addr_set")
        .allowlist_function("rte_eth_promiscuous_enable")
        .allowlist_function("rte_eth_dev_get_name_by_port")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("shim_.*")
        .allowlist_var("RTE_MAX_ETHPORTS")
        .allowlist_type("rte_eth_conf")
        .allowlist_type("rte_eth_dev_info")
        .allowlist_type("rte_ether_addr")
        .opaque_type("rte_mbuf")
        .opaque_type("rte_mempool")
        .layout_tests(false)
        .derive_default(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("catnip: bindgen failed on the DPDK headers");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    bindings.write_to_file(out.join("bindings.rs")).expect("catnip: cannot write bindings.rs");
}

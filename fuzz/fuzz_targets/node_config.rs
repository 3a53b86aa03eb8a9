//! A node configuration file, validated as `vigil check-config` does, against real
//! certificates in a scratch directory. Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vigil_consensus::pki::CertificateAuthority;

fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vigil-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let ca = CertificateAuthority::generate("prod").unwrap();
        let node = ca.issue_node(1, &[]).unwrap();
        std::fs::write(dir.join("certs/ca.crt"), &ca.certificate().cert_pem).unwrap();
        std::fs::write(dir.join("certs/node1.crt"), &node.cert_pem).unwrap();
        let key = dir.join("certs/node1.key");
        std::fs::write(&key, &node.key_pem).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = vigil::config::NodeConfig::parse(text, &scratch().join("node.toml"));
});

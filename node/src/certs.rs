//! `vigil certs`: creates the cluster CA and the certificates of nodes and operators.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use vigil_consensus::NodeId;
use vigil_consensus::authority::Role;
use vigil_consensus::pki::{CertificateAuthority, IssuedCertificate};

/// File mode of private keys: readable by the owner only.
pub const KEY_MODE: u32 = 0o600;
/// File mode of certificates.
pub const CERT_MODE: u32 = 0o644;

/// The file names `certs init` and `certs issue` use inside the output directory.
pub fn ca_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

/// The certificate and key files of node `id` in `dir`.
pub fn node_files(dir: &Path, id: NodeId) -> (PathBuf, PathBuf) {
    (dir.join(format!("node{id}.crt")), dir.join(format!("node{id}.key")))
}

/// The certificate and key files of operator `name` in `dir`.
pub fn operator_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}

/// Checks an operator's name: it names files in the output directory and a DNS name in the
/// certificate, so letters, digits and inner hyphens only, at most 63 (never `../x`).
pub fn check_operator_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        bail!("--operator: {name:?} is not a name: use 1 to 63 letters, digits and inner hyphens");
    }
    Ok(())
}

/// Creates a new CA in `out` and certificates for `nodes` and one operator, an admin.
pub fn init(
    out: &Path,
    cluster: &str,
    nodes: &[NodeId],
    extra_names: &[String],
    operator: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    if nodes.is_empty() {
        bail!("--nodes: give at least one node id, such as --nodes 1,2,3");
    }
    if let Some(zero) = nodes.iter().find(|id| **id == 0) {
        bail!("--nodes: node ids start at 1, got {zero}");
    }
    check_operator_name(operator)?;
    std::fs::create_dir_all(out).with_context(|| format!("--out: cannot create {}", out.display()))?;
    let (ca_cert, ca_key) = ca_files(out);
    // Refuse before writing anything, so a half-replaced set of files never exists.
    let mut planned = vec![ca_cert.clone(), ca_key.clone()];
    for id in nodes {
        let (cert, key) = node_files(out, *id);
        planned.extend([cert, key]);
    }
    let (operator_cert, operator_key) = operator_files(out, operator);
    planned.extend([operator_cert.clone(), operator_key.clone()]);
    if let Some(existing) = planned.iter().find(|path| path.exists()) {
        bail!("{} already exists: refusing to overwrite certificates (use another --out)", existing.display());
    }

    let ca = CertificateAuthority::generate(cluster)?;
    write_pair(&ca_cert, &ca_key, ca.certificate())?;
    for id in nodes {
        let (cert, key) = node_files(out, *id);
        write_pair(&cert, &key, &ca.issue_node(*id, extra_names)?)?;
    }
    write_pair(&operator_cert, &operator_key, &ca.issue_operator(operator, Role::Admin)?)?;
    Ok(planned)
}

/// What `certs issue` makes.
pub enum IssueFor<'a> {
    /// A node certificate.
    Node(NodeId),
    /// An operator certificate with its role.
    Operator(&'a str, Role),
}

/// Issues one more certificate from the CA in `dir`.
pub fn issue(dir: &Path, what: IssueFor<'_>, extra_names: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let (ca_cert, ca_key) = ca_files(dir);
    let cert_pem = std::fs::read_to_string(&ca_cert).with_context(|| format!("cannot read {}", ca_cert.display()))?;
    let key_pem = std::fs::read_to_string(&ca_key).with_context(|| format!("cannot read {}", ca_key.display()))?;
    let ca = CertificateAuthority::load(&cert_pem, &key_pem)
        .with_context(|| format!("{} / {} are not a usable CA", ca_cert.display(), ca_key.display()))?;
    let ((cert, key), issued) = match what {
        IssueFor::Node(0) => bail!("--node: node ids start at 1"),
        IssueFor::Node(id) => (node_files(dir, id), ca.issue_node(id, extra_names)?),
        IssueFor::Operator(name, role) => {
            check_operator_name(name)?;
            (operator_files(dir, name), ca.issue_operator(name, role)?)
        }
    };
    for path in [&cert, &key] {
        if path.exists() {
            bail!("{} already exists: refusing to overwrite", path.display());
        }
    }
    write_pair(&cert, &key, &issued)?;
    Ok(vec![cert, key])
}

fn write_pair(cert: &Path, key: &Path, issued: &IssuedCertificate) -> anyhow::Result<()> {
    write_file(key, issued.key_pem.as_bytes(), KEY_MODE)?;
    write_file(cert, issued.cert_pem.as_bytes(), CERT_MODE)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    // `create_new` with the mode set at creation: the key is never readable by others,
    // not even for an instant.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

//! A cluster spec (TOML) as `vigil apply` sends it: parsed, validated against three nodes,
//! checked against the caps and every node's allow-list. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_consensus::allow::{AllowList, check_cluster};
use vigil_consensus::{NodeInfo, limits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = vigil::spec_file::parse(text) else { return };
    let nodes: std::collections::BTreeMap<u64, NodeInfo> = (1..=3)
        .map(|id| (id, NodeInfo { name: format!("n{id}"), datacenter: format!("dc{id}"), ..NodeInfo::default() }))
        .collect();
    let _ = vigil::spec_file::validate(&spec, &nodes);
    let _ = limits::check_spec(&spec);
    let allowed = nodes.keys().map(|id| (*id, AllowList::default())).collect();
    let _ = check_cluster(&spec, &nodes, &allowed);
    for group in spec.groups() {
        let _ = group.policy().lease_wait();
    }
});

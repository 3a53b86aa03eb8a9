//! Bytes a peer sends on the Raft transport: a length-prefixed frame decoded as a request.
//! Nothing may panic, and nothing is allocated from the length a peer announces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_consensus::transport::frame::read_frame;
use vigil_consensus::transport::rpc::RaftRequest;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut reader = data;
    let _ = runtime.block_on(read_frame::<RaftRequest, _>(&mut reader));
});

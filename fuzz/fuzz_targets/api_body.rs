//! A JSON body sent to the API: decoded as each request the API takes, and a spec inside one
//! parsed and validated as `POST /spec` does. Nothing may panic. (The stable target in
//! `node/tests/fuzz.rs` also runs whole requests through the router.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::api::model::{AddMemberRequest, ApplySpecRequest, FailoverRequest, NoteRequest, PauseRequest};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<AddMemberRequest>(data);
    let _ = serde_json::from_slice::<NoteRequest>(data);
    let _ = serde_json::from_slice::<PauseRequest>(data);
    let _ = serde_json::from_slice::<FailoverRequest>(data);
    if let Ok(request) = serde_json::from_slice::<ApplySpecRequest>(data)
        && let Ok(spec) = vigil::spec_file::parse(&request.toml)
    {
        let _ = vigil::spec_file::validate(&spec, &Default::default());
        let _ = vigil_consensus::limits::check_spec(&spec);
        let _ = vigil_consensus::limits::check_author(&request.author);
    }
});

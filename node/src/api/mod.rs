//! The HTTPS API every node serves, and the client the CLI uses to call it.

pub mod auth;
pub mod client;
pub mod group_routes;
pub mod model;
pub mod routes;
pub mod server;

//! Generated code of distd's gRPC API.
//!
//! The `.proto` files under `proto/distd/` are the reference documentation of
//! the API: every RPC states its contract and the error codes it returns.
//! This crate only compiles them; typed helpers live in `distd-sdk`.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/distd_protos.rs"));

/// The API package this crate implements.
pub const API_PACKAGE: &str = "distd.v1";

//! turnstile: a horizontally scaled real-time session and presence broker.
//!
//! Map of the crate (data flows one way: API → registry → sink → gateway):
//! - [`session`]: domain types (ids, sessions, end reasons, notices).
//! - [`clock`]: registry time and local monotonic timers.
//! - [`registry`]: the authority over logins and stations; the trait and the
//!   in-memory implementation.
//! - [`auth`]: connect tokens (JWT).
//! - `cluster`: what makes nodes on one Redis one broker (membership,
//!   bus, reconciliation, recovery, expiry), beside the Redis registry;
//!   it reads the hub's socket index, never keeps its own.
//! - [`hub`]: local delivery of registry events to sockets and watchers;
//!   owns the index of this node's sockets by session.
//! - [`frames`]: the server → client WebSocket frames; [`close`]: every close
//!   code sent, with what a client should do about it (below hub and gateway).
//! - [`gateway`]: HTTP + WebSocket listener, client protocol, heartbeats.
//! - [`config`]: typed, validated settings; [`limits`]: the fixed bounds.
//! - [`api`]: the gRPC service (translation only); [`ctl`]: the operator CLI.
//! - [`server`]: assembly of a node and its shutdown; [`telemetry`]: logs, metrics.
//! - [`webhooks`]: the tenants' events as signed HTTP POSTs, from the event log.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod close;
mod cluster;
pub mod config;
pub mod connectivity;
pub mod ctl;
pub mod frames;
pub mod fuzzing;
pub mod gateway;
pub mod hub;
mod jwt_crypto;
pub mod limits;
pub mod metrics_names;
pub mod registry;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod webhooks;

/// Code generated from `proto/turnstile/v1/broker.proto`, with canonical
/// proto3 JSON (serde) for every message (pbjson-build).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("turnstile.v1");
    include!(concat!(env!("OUT_DIR"), "/turnstile.v1.serde.rs"));
}

//! turnstile: a horizontally scaled real-time session and presence broker.
//!
//! Map of the crate (data flows one way: API → registry → sink → gateway):
//! - [`session`]: domain types (ids, sessions, end reasons, notices).
//! - [`registry`]: the authority over logins and stations; the trait and the
//!   in-memory implementation.
//! - [`auth`]: connect tokens (JWT).
//! - [`hub`]: local delivery of registry events to sockets and watchers.
//! - [`gateway`]: HTTP + WebSocket listener, client protocol, heartbeats.
//! - [`config`]: typed, validated settings.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod gateway;
pub mod hub;
pub mod metrics_names;
pub mod registry;
pub mod session;

/// Code generated from `proto/turnstile/v1/broker.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("turnstile.v1");
}

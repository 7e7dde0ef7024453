//! Test harness: real registries, real certificates, a real token issuer,
//! the real daemon binary, and a small slowing proxy.
//!
//! - [`RegistryProc`] runs the Debian `docker-registry` binary (CNCF
//!   distribution, what Harbor embeds) on a free loopback port with its own
//!   temp storage: plain HTTP, or TLS with a certificate from [`Pki`], with
//!   no auth, htpasswd basic auth, or Docker token auth via [`TokenIssuer`].
//! - [`TestImage`] / [`TestIndex`] build random images and push them with
//!   the project's own registry client.
//! - [`Relay`] runs `harbor-relay serve` as a child process.
//! - [`SlowProxy`] forwards TCP to an upstream at a set byte rate, to make
//!   copies last long enough to be interrupted.
//! - [`WanLink`] puts a WAN in front of a server: an RTT (handshake and
//!   each direction) and one bandwidth cap shared by every connection.
//! - [`harbor::FakeHarbor`]: Harbor's REST API, its registry auth
//!   ([`harbor_auth`]: accounts, the token service, `v2auth`) and its
//!   referrers API, built from Harbor's source, in front of a real registry.
//! - [`hostile`]: registries that lie, and a recorder for where credentials go.
//! - [`tools`]: the checking tools a test runs (`promtool`, `hadolint`, …).

#![allow(dead_code)]

pub mod cosign;
pub mod fault;
pub mod harbor;
pub mod harbor_auth;
pub mod hostile;
mod images;
mod pki;
mod postgres;
mod proxy;
mod registry_proc;
mod relay;
mod token;
mod tools;
mod wait;
mod wan;
mod world;

#[allow(unused_imports)]
pub use images::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use postgres::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use registry_proc::*;
#[allow(unused_imports)]
pub use relay::*;
#[allow(unused_imports)]
pub use token::*;
#[allow(unused_imports)]
pub use tools::*;
#[allow(unused_imports)]
pub use wait::*;
#[allow(unused_imports)]
pub use wan::*;
#[allow(unused_imports)]
pub use world::*;

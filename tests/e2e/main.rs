//! End to end: real `docker-registry` processes as source and target, the
//! real `harbor-relay serve` process, Harbor-shaped webhooks, and checks on
//! what the target holds. One test binary, one module per topic.

#[path = "../support/mod.rs"]
mod support;

mod auth_tls;
mod cli;
mod copy;
mod lifecycle;
mod page;
mod referrers;
mod rules;
mod webhooks;

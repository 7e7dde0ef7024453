//! The binary's command-line side: argument definitions, the one-shot
//! commands, and the jobs API client. Business logic lives in the library.

pub mod args;
pub mod commands;
pub mod gates;
pub mod jobs;
pub mod store;

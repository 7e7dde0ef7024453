//! Any configuration file: loading must never panic, only refuse with a
//! message.
#![no_main]

use harbor_relay::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(std::path::Path::new("fuzz.toml"), text, &|_| {
            Some("value".to_string())
        });
    }
});

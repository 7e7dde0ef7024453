//! Any body a client can POST to the webhook endpoints, in every format:
//! parsing must never panic, and whatever it accepts must be valid
//! references that the rules can plan.
#![no_main]

use harbor_relay::config::RuleConfig;
use harbor_relay::event::{self, Format};
use harbor_relay::rules::RuleSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rules = RuleSet::new(&[RuleConfig::new("fuzz", "external", "integrated")]).expect("rules");
    for format in [Format::Default, Format::CloudEvents] {
        if let Ok(event::Parsed::Artifact(ev)) = event::parse(format, data) {
            for a in &ev.artifacts {
                let _ = rules.plans(&ev.project, &ev.repository, &a.reference);
                let _ = rules.delete_plans(&ev.project, &ev.repository, &a.reference);
            }
        }
    }
    if let Ok(events) = event::parse_distribution(data) {
        for ev in events {
            for a in &ev.artifacts {
                let _ = rules.plans(&ev.project, &ev.repository, &a.reference);
            }
        }
    }
});

//! `rules test --gates`: each gated rule's verdict on one image, read from
//! the source as a job would read it (the source manifest, its signatures,
//! its scan), without writing anything anywhere.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use harbor_relay::config::Config;
use harbor_relay::gate::{self, Verdict};
use harbor_relay::{daemon, reference};

/// Prints, for each rule that takes the image and has gates, every gate's
/// verdict and what a job would do.
pub async fn run(path: PathBuf, image: String) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let image = reference::parse_image(&image)?;
    let Some((project, _)) = image.repository.split_once('/') else {
        bail!("'{}' has no project", image.repository);
    };
    let rules = harbor_relay::rules::RuleSet::new(&config.rules)?;
    let (plans, _) = rules.plans(project, &image.repository, &image.reference);
    let registries = daemon::registries(&config)?;
    println!();
    for p in &plans {
        let Some(gates) = rules.get(&p.rule).and_then(|r| r.config.gates.as_ref()) else {
            println!(
                "rule '{}': no gates; every artifact it takes crosses",
                p.rule
            );
            continue;
        };
        let Some(source) = registries.get(&p.from) else {
            bail!("no registry '{}'", p.from);
        };
        let top = source
            .get_manifest(&image.repository, &image.reference)
            .await
            .with_context(|| {
                format!(
                    "reading {}{} from '{}'",
                    image.repository, image.reference, p.from
                )
            })?;
        let digest = gate::policy::gated_digest(&image.reference, &top);
        let decision =
            harbor_relay::replicate::gates::judge(source, &image.repository, &digest, gates)
                .await
                .with_context(|| format!("reading the gates' evidence from '{}'", p.from))?;
        println!("rule '{}': gates on {digest}", p.rule);
        for (g, v) in &decision.verdicts {
            println!("  {g}: {} — {}", v.word(), v.reason());
        }
        let what = match decision.overall() {
            Verdict::Pass(_) => "a job would copy it now".to_string(),
            Verdict::Hold(_) => format!(
                "a job would be held, looking again every {} and failing after {}",
                humantime::format_duration(gates.recheck),
                humantime::format_duration(gates.hold_for)
            ),
            Verdict::Refuse(_) => "a job would be refused (not retried)".to_string(),
        };
        println!("  => {what}");
    }
    Ok(())
}

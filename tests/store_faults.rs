//! The embedded store under faults (issue 25, finding 9): a full disk and
//! a store that lost part of its log. A `503` means nothing was stored;
//! `/readyz` says when the store cannot write, and the daemon stops so
//! that it is opened again; a store that opens behind what it had
//! accepted refuses to start, naming its high-water mark.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

/// A tmpfs of `size` mounted for the test (unmounted when dropped): a
/// disk that fills. The suite runs as root (scripts/test.sh, CI), which
/// `mount` needs; anything else fails here, saying so.
struct SmallDisk {
    _dir: tempfile::TempDir,
    at: PathBuf,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = dir.path().join("disk");
        std::fs::create_dir(&at).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a small tmpfs needs root (the suite runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { _dir: dir, at }
    }

    fn path(&self) -> &Path {
        &self.at
    }

    /// Fills what is left with one file; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.at.join("filler");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .output()
            .expect("dd");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

fn digest(i: u64) -> String {
    format!("sha256:{:064x}", i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_nothing_it_refused_and_the_daemon_restarts_to_recover() {
    let w = World::new().await;
    let disk = SmallDisk::new("16m");
    let store = disk.path().join("store");
    let rest = format!(
        "{}[[rules]]\nfrom = \"external\"\nto = \"integrated\"\n",
        w.registries()
    );
    let mut relay = Relay::start_store(
        Some(&format!("path = \"{}\"\n", store.display())),
        free_port(),
        "",
        &rest,
        &[],
    )
    .await;
    let mut accepted = Vec::new();
    for i in 0..10 {
        accepted.extend(
            relay
                .push(push_event(
                    "library/app",
                    Some(&format!("a{i}")),
                    &digest(i),
                ))
                .await,
        );
    }
    let filler = disk.fill();
    let mut refused = Vec::new();
    for i in 0..50 {
        let tag = format!("r{i}");
        let (status, v) = relay
            .deliver(push_event("library/app", Some(&tag), &digest(100 + i)))
            .await;
        match status {
            202 => accepted.extend(
                v["jobs"]
                    .as_array()
                    .expect("jobs")
                    .iter()
                    .map(|j| j["id"].as_u64().expect("id")),
            ),
            503 => {
                let why = v["error"].as_str().expect("error");
                assert!(why.contains("nothing was accepted"), "{why}");
                refused.push(tag);
            }
            other => panic!("{other}: {v}"),
        }
    }
    assert!(!refused.is_empty(), "a full disk refused nothing");
    let (status, body) = relay.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("cannot write"), "{body}");
    // sled refuses every write after one failed: the daemon stops by
    // itself, failing, so that systemd opens the store again.
    let exit = relay.wait_exit(Duration::from_secs(40)).await;
    assert!(!exit.success(), "{exit}");
    assert!(
        relay.logs().contains("stopping so that it is opened again"),
        "{}",
        relay.logs()
    );
    std::fs::remove_file(filler).expect("free the disk");
    relay.start_again().await;
    let (_, all) = relay.get("/api/v1/jobs?limit=1000").await;
    let jobs = all["jobs"].as_array().expect("jobs");
    for tag in &refused {
        assert!(
            !jobs.iter().any(|j| j["reference"] == tag.as_str()),
            "{tag} was refused with 503 and stored anyway: {all}"
        );
    }
    for id in &accepted {
        assert!(
            jobs.iter().any(|j| j["id"] == *id),
            "accepted job {id} lost: {all}"
        );
    }
    let (status, _) = relay.get("/readyz").await;
    assert_eq!(status, 200);
}

/// A store whose log lost its newest part (an old copy put back, a
/// truncated file) refuses to start, naming its high-water mark, instead
/// of running with 2 of 50 jobs.
#[test]
fn a_store_behind_its_high_water_mark_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let early = dir.path().join("early");
    let cfg = format!(
        "[store]\npath = \"{}\"\n[registries.external]\nurl = \"http://127.0.0.1:1\"\n",
        store.display()
    );
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, &cfg).expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let spec = |i: u64| job_spec("p/app", &format!("t{i}"));
        let (s, _) = harbor_relay::jobs::store::Store::open(&store).expect("open");
        for i in 0..2 {
            s.enqueue(vec![spec(i)]).await.expect("enqueue");
        }
        s.flush().await.expect("flush");
        drop(s);
        std::thread::sleep(Duration::from_millis(300));
        copy_dir(&store, &early);
        let (s, _) = harbor_relay::jobs::store::Store::open(&store).expect("open");
        for i in 2..50 {
            s.enqueue(vec![spec(i)]).await.expect("enqueue");
        }
        s.flush().await.expect("flush");
    });
    // The old copy put back, the mark kept.
    let mark = std::fs::read(store.join("harbor-relay.high-water")).expect("a mark");
    std::fs::remove_dir_all(&store).expect("rm");
    copy_dir(&early, &store);
    std::fs::write(store.join("harbor-relay.high-water"), mark).expect("mark");
    let out = relay_cmd(&["store", "export", "--config", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("were accepted") && err.contains("harbor-relay.high-water"),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(ok.success());
}

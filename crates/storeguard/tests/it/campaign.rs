//! Crashes and power cuts (docs/reliability.md): a few cycles of the campaigns that
//! `scripts/campaign.sh` runs a hundred times, through the same runner (`sg-campaign`),
//! and the regressions they found.

use std::process::Command;

use storeguard_fixtures::harness::*;

/// Runs `sg-campaign` with `args`; fails the test with its output unless every check passed.
/// How much video a fault costs depends on the machine's load (a late sync round): here
/// it may be up to a second over the bound, which `scripts/campaign.sh` measures.
fn campaign(args: &[&str]) {
    let mut rng = Rng::new("campaign");
    let seed = rng.next_u64().to_string();
    let out = Command::new(storeguard_fixtures::fixture_bin("sg-campaign"))
        .args(args)
        .args(["--seed", &seed, "--loss-slack-ms", "1000"])
        .output()
        .expect("run sg-campaign (cargo build --workspace --bins)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "sg-campaign {args:?} failed:\n{text}");
    assert!(text.contains("RESULT                  PASS"), "{text}");
}

/// Three kills: at random, in eviction, in clip sealing.
#[test]
fn kill_campaign_loses_nothing_accepted() {
    campaign(&[
        "--fault",
        "kill",
        "--cycles",
        "3",
        "--budget",
        "1MiB",
        "--max-run-ms",
        "4000",
    ]);
}

/// `button press` used to answer 202 when the edges were queued, before the debounce and
/// the commit: a crash right after the answer lost an accepted press. Now the answer names
/// the committed event, and a SIGKILL straight after it keeps it.
#[test]
fn an_accepted_press_survives_a_kill_right_after_its_reply() {
    let site = Site::with_cameras(1);
    for round in 0..3 {
        let mut d = site.start();
        let out = site.cli(&["button", "press", "till", "--test", "--hold-ms", "50"]);
        out.expect(0);
        d.signal(libc::SIGKILL);
        d.wait_exit(DEADLINE).expect("the daemon dies on SIGKILL");
        let event = out
            .stdout
            .split_once("event ")
            .and_then(|(_, rest)| rest.split(';').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no event id in {:?}", out.stdout));
        assert!(event.starts_with("evt-"), "{}", out.stdout);
        let _d = site.start();
        let n: i64 = site
            .db()
            .query_row("SELECT count(*) FROM event WHERE uid = ?1", [&event], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "round {round}: accepted press {event} lost to a kill");
    }
}

/// Three power cuts: in upload resume, in a config reload, at random (the data dir on
/// sg-lazyfs, which drops every write not yet fsynced).
#[test]
fn power_cut_campaign_loses_nothing_accepted() {
    if !std::path::Path::new("/dev/fuse").exists() {
        skip(
            "power_cut_campaign_loses_nothing_accepted",
            "no /dev/fuse for sg-lazyfs",
        );
        return;
    }
    campaign(&[
        "--fault",
        "cut",
        "--cycles",
        "3",
        "--budget",
        "1MiB",
        "--max-run-ms",
        "4000",
        "--phase-offset",
        "3",
    ]);
}

//! The CLI without a daemon: config validation, error locations, `config show`, and
//! what commands that need the daemon say when it is not running. Drives the real binary.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use storeguard_fixtures::harness::*;

fn edge_configs() -> Vec<PathBuf> {
    let dir = repo_root().join("edge-config");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "expected the example configs in {dir:?}");
    v
}

#[test]
fn every_edge_config_validates() {
    let files = edge_configs();
    let mut args = vec!["config".into(), "validate".into()];
    args.extend(files.iter().map(|p| p.clone().into_os_string()));
    let out = run(&args);
    out.expect(0);
    assert_eq!(out.stderr, "", "no warnings expected");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        files.len(),
        "one line per file:\n{}",
        out.stdout
    );
    for (f, l) in files.iter().zip(&lines) {
        assert!(l.starts_with(&format!("{}: ok (", f.display())), "{l}");
    }
    let line_of = |name: &str| {
        *lines
            .iter()
            .find(|l| l.contains(&format!("edge-config/{name}:")))
            .unwrap()
    };
    assert!(line_of("storeguard.toml").contains("(24 cameras, 2 buttons,"));
    assert!(line_of("demo.toml").contains("(4 cameras, 1 buttons,"));
    assert!(line_of("minimal.toml").contains("(1 cameras, 1 buttons,"));
}

/// `storeguard --config F config show`, which must succeed.
fn config_show(f: &std::path::Path) -> Out {
    let out = run(&[
        "--config".as_ref(),
        f.as_os_str(),
        "config".as_ref(),
        "show".as_ref(),
    ]);
    out.expect(0);
    out
}

#[test]
fn edge_configs_show_without_passwords() {
    for f in edge_configs() {
        let text = fs::read_to_string(&f).unwrap();
        let out = config_show(&f);
        // Every password written in the example must be masked in the output.
        for line in text.lines() {
            if let Some(pw) = line.trim().strip_prefix("password = ") {
                let pw = pw.split('#').next().unwrap().trim().trim_matches('"');
                assert!(
                    !out.all().contains(pw),
                    "{}: password {pw:?} shown",
                    f.display()
                );
            }
        }
    }
}

/// The store config ships with its uplink over mutual TLS, never plain MQTT.
#[test]
fn the_store_config_talks_to_the_control_centre_over_mutual_tls() {
    let f = repo_root().join("edge-config/storeguard.toml");
    let out = config_show(&f);
    let shown: toml::Value = toml::from_str(&out.stdout).unwrap();
    let up = &shown["uplink"];
    assert!(
        up["broker"].as_str().unwrap().starts_with("mqtts://"),
        "{up}"
    );
    for file in ["ca", "cert", "key"] {
        assert!(up["tls"][file].is_str(), "uplink.tls.{file} missing: {up}");
    }
    assert!(
        !shown["trust"]["control_centre_keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn demo_config_resolves_paths_next_to_the_repository() {
    let f = repo_root().join("edge-config/demo.toml");
    let out = config_show(&f);
    let root = repo_root();
    let root = root.display();
    assert!(
        out.stdout.contains(&format!(
            "data_dir = \"{root}/edge-config/../local/demo/data\""
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "socket = \"{root}/edge-config/../local/demo/control.sock\""
        )),
        "{}",
        out.stdout
    );
}

const BASE: &str = r#"[site]
site_id = "store-1"
device_id = "box-a"

[storage]
data_dir = "data"
segment_length = "30s"

[control]
socket = "control.sock"

[[cameras]]
id = "cam1"
url = "rtsp://10.0.0.5/stream1"
username = "admin"
password = "s3cret"

[[cameras]]
id = "cam2"
url = "rtsp://10.0.0.6:8554/main"

[[buttons]]
name = "till"
chip = "sim"
line = 0
wiring = "normally-open"
cameras = ["cam1", "cam2"]
pre_roll = "30s"
"#;

/// One broken config: `from` replaced by `to` in BASE; the problem is expected at the
/// `nth` occurrence of `at` in the broken text, `plus` bytes further on.
struct Broken {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    at: &'static str,
    nth: usize,
    plus: usize,
    field: &'static str,
    message: &'static str,
}

const BROKEN: &[Broken] = &[
    Broken {
        name: "TOML syntax error",
        from: "[storage]",
        to: "[storage",
        at: "[storage",
        nth: 0,
        plus: 8,
        field: "(file)",
        message: "TOML syntax: ",
    },
    Broken {
        name: "unknown key",
        from: "device_id = \"box-a\"\n",
        to: "device_id = \"box-a\"\ncolour = \"red\"\n",
        at: "colour",
        nth: 0,
        plus: 0,
        field: "site.colour",
        message: "unknown field `colour`",
    },
    Broken {
        name: "wrong type (integer for a string)",
        from: "username = \"admin\"",
        to: "username = 42",
        at: "42",
        nth: 0,
        plus: 0,
        field: "cameras[0].username",
        message: "invalid type: integer `42`, expected a string",
    },
    Broken {
        name: "wrong type (number for a duration)",
        from: "segment_length = \"30s\"",
        to: "segment_length = 30",
        at: "30",
        nth: 0,
        plus: 0,
        field: "storage.segment_length",
        message: "invalid type: integer `30`",
    },
    Broken {
        name: "duplicate camera id",
        from: "id = \"cam2\"",
        to: "id = \"cam1\"",
        at: "\"cam1\"",
        nth: 1,
        plus: 0,
        field: "cameras[1].id",
        message: "duplicate camera id \"cam1\" (also cameras[0])",
    },
    Broken {
        name: "button mapped to a missing camera",
        from: "[\"cam1\", \"cam2\"]",
        to: "[\"cam1\", \"cam9\"]",
        at: "\"cam9\"",
        nth: 0,
        plus: 0,
        field: "buttons[0].cameras[1]",
        message: "no camera with id \"cam9\" (known: cam1, cam2)",
    },
    Broken {
        name: "bad URL scheme",
        from: "\"rtsp://10.0.0.6:8554/main\"",
        to: "\"http://10.0.0.6/main\"",
        at: "\"http://",
        nth: 0,
        plus: 0,
        field: "cameras[1].url",
        message: "unsupported scheme \"http\"",
    },
    Broken {
        name: "bad URL port",
        from: ":8554/main",
        to: ":99999/main",
        at: "\"rtsp://10.0.0.6",
        nth: 0,
        plus: 0,
        field: "cameras[1].url",
        message: "invalid port \"99999\"",
    },
    Broken {
        name: "not a URL",
        from: "\"rtsp://10.0.0.5/stream1\"",
        to: "\"10.0.0.5/stream1\"",
        at: "\"10.0.0.5",
        nth: 0,
        plus: 0,
        field: "cameras[0].url",
        message: "not a URL",
    },
    Broken {
        name: "duration out of range (button)",
        from: "pre_roll = \"30s\"",
        to: "pre_roll = \"15m\"",
        at: "\"15m\"",
        nth: 0,
        plus: 0,
        field: "buttons[0].pre_roll",
        message: "15m is out of range (0s to 10m)",
    },
    Broken {
        name: "duration out of range (storage)",
        from: "segment_length = \"30s\"",
        to: "segment_length = \"1s\"",
        at: "\"1s\"",
        nth: 0,
        plus: 0,
        field: "storage.segment_length",
        message: "1s is out of range (2s to 10m)",
    },
    Broken {
        name: "unparsable duration",
        from: "segment_length = \"30s\"",
        to: "segment_length = \"soon\"",
        at: "\"soon\"",
        nth: 0,
        plus: 0,
        field: "storage.segment_length",
        message: "invalid duration \"soon\"",
    },
    Broken {
        name: "budget percentage over 100",
        from: "data_dir = \"data\"\n",
        to: "data_dir = \"data\"\nbudget = \"150%\"\n",
        at: "\"150%\"",
        nth: 0,
        plus: 0,
        field: "storage.budget",
        message: "percentage must be in (0, 100]",
    },
    Broken {
        name: "id with a space",
        from: "name = \"till\"",
        to: "name = \"till 1\"",
        at: "\"till 1\"",
        nth: 0,
        plus: 0,
        field: "buttons[0].name",
        message: "contains ' '",
    },
    Broken {
        name: "password without username",
        from: "username = \"admin\"\n",
        to: "",
        at: "\"s3cret\"",
        nth: 0,
        plus: 0,
        field: "cameras[0].password",
        message: "password given without username",
    },
    Broken {
        name: "missing required section",
        from: "[storage]\ndata_dir = \"data\"\nsegment_length = \"30s\"\n",
        to: "",
        at: "[site]",
        nth: 0,
        plus: 0,
        field: "(file)",
        message: "missing field `storage`",
    },
    Broken {
        name: "missing required field",
        from: "device_id = \"box-a\"\n",
        to: "",
        at: "[site]",
        nth: 0,
        plus: 0,
        field: "site",
        message: "missing field `device_id`",
    },
];

#[test]
fn broken_configs_are_reported_with_file_line_column_and_field() {
    for case in BROKEN {
        assert!(BASE.contains(case.from), "{}: bad test case", case.name);
        let text = BASE.replacen(case.from, case.to, 1);
        let site = Site::new();
        let path = site.write_config(&text);
        let out = site.cli(&["config", "validate", path.to_str().unwrap()]);
        assert_eq!(out.code(), Some(78), "{}: {out:?}", case.name);
        assert_eq!(out.stdout, "", "{}", case.name);
        let found = problems(&out.stderr, &path);
        let (line, column) = position(&text, case.at, case.nth, case.plus);
        let hit = found.iter().find(|p| p.field == case.field);
        let Some(p) = hit else {
            panic!(
                "{}: no problem for {}:\n{}",
                case.name, case.field, out.stderr
            )
        };
        assert_eq!(
            (p.line, p.column),
            (line, column),
            "{}: wrong position\n{}",
            case.name,
            out.stderr
        );
        assert!(
            p.message.contains(case.message),
            "{}: message {:?} lacks {:?}",
            case.name,
            p.message,
            case.message
        );
        // Secrets stay out of error messages too.
        assert!(
            !out.stderr.contains("s3cret"),
            "{}: {}",
            case.name,
            out.stderr
        );
    }
}

#[test]
fn all_problems_are_reported_at_once_in_file_order() {
    let text = BASE
        .replacen("id = \"cam2\"", "id = \"cam1\"", 1)
        .replacen("[\"cam1\", \"cam2\"]", "[\"cam1\", \"cam9\"]", 1)
        .replacen("pre_roll = \"30s\"", "pre_roll = \"11m\"", 1);
    let site = Site::new();
    let path = site.write_config(&text);
    let out = site.cli(&["config", "validate", path.to_str().unwrap()]);
    out.expect(78);
    let found = problems(&out.stderr, &path);
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "cameras[1].id",
            "buttons[0].cameras[1]",
            "buttons[0].pre_roll"
        ],
        "{}",
        out.stderr
    );
    let lines: Vec<usize> = found.iter().map(|p| p.line).collect();
    assert!(lines.is_sorted(), "{lines:?}");
}

#[test]
fn daemon_refuses_a_broken_config_before_touching_anything() {
    let text = BASE.replacen("pre_roll = \"30s\"", "pre_roll = \"15m\"", 1);
    let site = Site::new();
    let path = site.write_config(&text);
    let out = site.run_daemon_expecting_exit(&path, "daemon");
    out.expect(78);
    // Nothing but the located problem: no prefix, no log noise before it.
    let found = problems(&out.stderr, &path);
    assert_eq!(found.len(), 1, "{}", out.stderr);
    assert_eq!(found[0].field, "buttons[0].pre_roll");
    assert_eq!(
        (found[0].line, found[0].column),
        position(&text, "\"15m\"", 0, 0)
    );
    assert!(
        !site.data_dir().exists(),
        "data dir created for a bad config"
    );
    assert!(!site.socket().exists(), "socket created for a bad config");

    let out = site.cli(&["config", "show"]);
    out.expect(78);
    assert_eq!(problems(&out.stderr, &path).len(), 1);
}

#[test]
fn validate_checks_every_path_and_reports_each() {
    let site = Site::new();
    let good = site.write_file("good.toml", &config(2));
    let bad = site.write_file("bad.toml", &config(2).replace("[[buttons]]", "[[button]]"));
    let missing = site.path("missing.toml");
    let out = run(&[
        "config".as_ref(),
        "validate".as_ref(),
        good.as_os_str(),
        bad.as_os_str(),
        missing.as_os_str(),
    ]);
    out.expect(78);
    assert!(
        out.stdout.starts_with(&format!(
            "{}: ok (2 cameras, 1 buttons, version ",
            good.display()
        )),
        "{}",
        out.stdout
    );
    let mut err = out.stderr.lines();
    let bad_line = err.next().unwrap();
    assert_eq!(problems(bad_line, &bad)[0].field, "button");
    assert!(bad_line.contains("unknown field `button`"), "{bad_line}");
    assert_eq!(
        err.next().unwrap(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
    assert_eq!(err.next(), None);

    // Order and count don't change the verdict: all good is 0.
    let out = run(&[
        "config".as_ref(),
        "validate".as_ref(),
        good.as_os_str(),
        good.as_os_str(),
    ]);
    out.expect(0);
    assert_eq!(out.stdout.lines().count(), 2);
}

#[test]
fn missing_config_file_exits_78_naming_the_path() {
    let site = Site::new();
    let missing = site.path("nope/storeguard.toml");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["config", "validate", m],
        vec!["--config", m, "config", "show"],
        vec!["--config", m, "run"],
    ] {
        let out = run(&args);
        out.expect(78);
        assert_eq!(
            out.stderr.trim_end(),
            format!("{m}: cannot read: No such file or directory (os error 2)"),
            "{args:?}"
        );
    }
    assert!(!site.path("nope").exists());
}

#[test]
fn config_show_masks_passwords_and_fills_in_defaults() {
    let url_secret = "urlpw-77Hq-never-shown";
    let text = config(2).replace(
        "url = \"rtsp://127.0.0.1:8554/cam2\"",
        &format!("url = \"rtsp://viewer:{url_secret}@127.0.0.1:8554/cam2\""),
    );
    let site = Site::new();
    let path = site.write_config(&text);
    let out = site.cli(&["config", "show"]);
    out.expect(0);
    let shown = &out.stdout;
    for secret in [SECRET, url_secret] {
        assert!(
            !out.all().contains(secret),
            "secret {secret:?} leaked:\n{shown}"
        );
    }
    let version = version_of(&path);
    let dir = site.dir.path().display();
    for expect in [
        format!("# {} (version {version})", path.display()),
        "password = \"********\"".into(),
        "url = \"rtsp://viewer:********@127.0.0.1:8554/cam2\"".into(),
        // Relative paths, resolved against the config file's directory.
        format!("data_dir = \"{dir}/data\""),
        format!("socket = \"{dir}/control.sock\""),
        // Defaults.
        "budget = \"85%\"".into(),
        "segment_length = \"30s\"".into(),
        "sync_interval = \"1s\"".into(),
        "stall_timeout = \"10s\"".into(),
        "offline_alert_after = \"1m\"".into(),
        "max_reconnect_backoff = \"30s\"".into(),
        "retention_target_days = 31".into(),
        "transport = \"tcp\"".into(),
        "enabled = true".into(),
        "weight = 1.0".into(),
        "active_low = false".into(),
        "bias = \"as-is\"".into(),
        "wiring = \"normally-open\"".into(),
        "debounce = \"20ms\"".into(),
        "pre_roll = \"30s\"".into(),
        "post_roll = \"1m\"".into(),
        "stuck_after = \"1m\"".into(),
    ] {
        assert!(shown.contains(&expect), "missing {expect:?} in:\n{shown}");
    }

    // The output is itself a valid config with the same shape.
    let again = site.write_file("shown.toml", shown);
    let v = run(&["config".as_ref(), "validate".as_ref(), again.as_os_str()]);
    v.expect(0);
    assert!(v.stdout.contains("(2 cameras, 1 buttons,"), "{}", v.stdout);
}

#[test]
fn commands_that_need_the_daemon_exit_69_when_it_is_not_running() {
    let site = Site::with_cameras(1);
    let sock = site.socket();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["config", "reload"],
    ] {
        let out = site.cli(&args);
        out.expect(69);
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr.contains("the storeguard daemon is not running")
                && out.stderr.contains(&sock.display().to_string()),
            "{args:?}: {}",
            out.stderr
        );
    }

    // A socket file left by a crashed daemon: nobody listening is still "not running".
    let l = UnixListener::bind(&sock).unwrap();
    drop(l);
    assert!(sock.exists());
    let out = site.cli(&["status"]);
    out.expect(69);
    assert!(out.stderr.contains("not running"), "{}", out.stderr);

    // --socket overrides the config.
    let other = site.path("elsewhere.sock");
    let out = site.cli(&["--socket", other.to_str().unwrap(), "status"]);
    out.expect(69);
    assert!(
        out.stderr.contains(&other.display().to_string()),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    run(&["config", "validate"]).expect(2);
    run(&["no-such-command"]).expect(2);
    let out = run(&["--version"]);
    out.expect(0);
    assert_eq!(
        out.stdout.trim(),
        format!("storeguard {}", env!("CARGO_PKG_VERSION"))
    );
}

//! Feature flags over mutual TLS: brainstem.v1.Flags and the flagd evaluation protocol (v2, v1),
//! file reloads reaching Watch and EventStream, overrides, refusals, and overrides across a restart.

use std::time::Duration;

use brainstem_client::Client;
use brainstem_client::flagd::evaluation::{v1 as fv1, v2 as fv2};
use brainstem_client::v1::{
    ClearFlagOverrideRequest, EvaluateAllFlagsRequest, EvaluateFlagRequest, FlagRollout, FlagType,
    ListFlagsRequest, SetFlagOverrideRequest, WatchFlagsRequest,
};
use brainstem_proto::json::{json_to_struct, value_to_json};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{DaemonProcess, eventually, options_for};
use crate::inprocess::InProcess;

const FLAGS_CONFIG: &str = "[flags]\nkeep_alive_seconds = 1\nsettle_ms = 50\n";

fn context(value: Value) -> Option<prost_types::Struct> {
    let Value::Object(map) = value else {
        unreachable!()
    };
    Some(json_to_struct(&map))
}

fn definitions(banner_default: &str) -> String {
    json!({
        "flags": {
            "banner": {"state": "ENABLED", "variants": {"on": true, "off": false},
                "defaultVariant": banner_default},
            // flagd-testbed's fractional-flag: its vectors hold for this key and these weights.
            "fractional-flag": {"state": "ENABLED",
                "variants": {"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades"},
                "defaultVariant": "clubs",
                "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
                    ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]}},
            "retries": {"state": "ENABLED", "variants": {"few": 2, "many": 10}, "defaultVariant": "few",
                "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "many", null]}},
            "ratio": {"state": "ENABLED", "variants": {"low": 0.25, "high": 0.75}, "defaultVariant": "low"},
            "layout": {"state": "ENABLED", "variants": {"a": {"columns": 2}, "b": {"columns": 3}},
                "defaultVariant": "b"},
            "legacy": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "undecided": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": null},
        },
        "metadata": {"team": "platform"},
    })
    .to_string()
}

async fn evaluate(
    client: &mut Client,
    key: &str,
    ctx: Value,
) -> Result<(Value, String, String), tonic::Status> {
    let reply = client
        .flags
        .evaluate(EvaluateFlagRequest {
            key: key.to_owned(),
            context: context(ctx),
            r#type: 0,
        })
        .await?
        .into_inner();
    Ok((
        reply
            .value
            .as_ref()
            .map(value_to_json)
            .unwrap_or(Value::Null),
        reply.variant,
        reply.reason,
    ))
}

async fn banner(client: &Client) -> Option<Value> {
    let mut client = client.clone();
    evaluate(&mut client, "banner", json!({}))
        .await
        .ok()
        .map(|(v, _, _)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_and_the_flagd_protocol_over_mtls_follow_the_file() {
    let daemon = InProcess::start("", FLAGS_CONFIG).await;
    let mut client = daemon.client().await;
    let file = daemon.state_dir.join("flags.json");

    // No file yet: the shipped defaults serve.
    let (value, variant, reason) = evaluate(&mut client, "modules.vision", json!({}))
        .await
        .unwrap();
    assert_eq!(
        (value, variant.as_str(), reason.as_str()),
        (json!(true), "on", "STATIC")
    );
    let status = evaluate(&mut client, "no.such.flag", json!({}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let mismatch = client
        .flags
        .evaluate(EvaluateFlagRequest {
            key: "modules.vision".into(),
            context: None,
            r#type: FlagType::String as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument, "{mismatch:?}");

    // Subscribe before the file appears: Watch and both EventStreams see the change.
    let mut watch = client
        .flags
        .watch(WatchFlagsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut v2 = fv2::service_client::ServiceClient::new(client.channel.clone());
    let mut v1 = fv1::service_client::ServiceClient::new(client.channel.clone());
    let mut events = v2
        .event_stream(fv2::EventStreamRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert_eq!(first.r#type, "provider_ready");

    std::fs::write(&file, definitions("off")).unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a change within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(change.cause, "file");
    assert!(
        change
            .flags
            .iter()
            .any(|c| c.key == "banner" && c.kind == "write"),
        "{change:?}"
    );
    let event = next_of(&mut events, "configuration_change").await;
    let data = Value::Object(brainstem_proto::json::struct_to_json(
        event.data.as_ref().unwrap(),
    ));
    assert_eq!(data["flags"]["banner"]["type"], json!("write"), "{data}");
    assert_eq!(
        data["flags"]["modules.vision"]["type"],
        json!("delete"),
        "{data}"
    );
    // Silence: keep_alive (configured to 1 s here).
    next_of(&mut events, "keep_alive").await;

    // flagd v2: typed resolvers, values as defined.
    let b = v2
        .resolve_boolean(fv2::ResolveBooleanRequest {
            flag_key: "banner".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (b.value, b.variant.as_deref(), b.reason.as_str()),
        (Some(false), Some("off"), "STATIC")
    );
    for (name, suit) in [
        ("jack", "hearts"),
        ("queen", "spades"),
        ("ten", "clubs"),
        ("nine", "diamonds"),
    ] {
        let s = v2
            .resolve_string(fv2::ResolveStringRequest {
                flag_key: "fractional-flag".into(),
                context: context(json!({"user": {"name": name}})),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.value.as_deref(), Some(suit), "{name}");
        assert_eq!(s.reason, "TARGETING_MATCH");
    }
    let i = v2
        .resolve_int(fv2::ResolveIntRequest {
            flag_key: "retries".into(),
            context: context(json!({"email": "ops@example.com"})),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((i.value, i.reason.as_str()), (Some(10), "TARGETING_MATCH"));
    let f = v2
        .resolve_float(fv2::ResolveFloatRequest {
            flag_key: "ratio".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.value, Some(0.25));
    let o = v2
        .resolve_object(fv2::ResolveObjectRequest {
            flag_key: "layout".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        Value::Object(brainstem_proto::json::struct_to_json(&o.value.unwrap())),
        json!({"columns": 3})
    );
    let metadata = Value::Object(brainstem_proto::json::struct_to_json(&o.metadata.unwrap()));
    assert_eq!(metadata["team"], json!("platform"));
    // Disabled in v2: no value, no variant.
    let d = v2
        .resolve_boolean(fv2::ResolveBooleanRequest {
            flag_key: "legacy".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.value, d.variant, d.reason.as_str()),
        (None, None, "DISABLED")
    );
    // No default variant: v2 says DEFAULT without a value (the caller's default applies).
    let u = v2
        .resolve_boolean(fv2::ResolveBooleanRequest {
            flag_key: "undecided".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (u.value, u.variant, u.reason.as_str()),
        (None, None, "DEFAULT")
    );
    // Status codes providers rely on.
    let missing = v2
        .resolve_boolean(fv2::ResolveBooleanRequest {
            flag_key: "nope".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let wrong = v2
        .resolve_string(fv2::ResolveStringRequest {
            flag_key: "banner".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);

    // flagd v1: zero values when disabled; ResolveAll.
    let d = v1
        .resolve_boolean(fv1::ResolveBooleanRequest {
            flag_key: "legacy".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.value, d.variant.as_str(), d.reason.as_str()),
        (false, "", "DISABLED")
    );
    // v1 cannot say "no value": NOT_FOUND, as flagd answers there.
    let u = v1
        .resolve_boolean(fv1::ResolveBooleanRequest {
            flag_key: "undecided".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(u.code(), Code::NotFound, "{u:?}");
    let all = v1
        .resolve_all(fv1::ResolveAllRequest {
            context: context(json!({"user": {"name": "jack"}})),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.flags["fractional-flag"].value,
        Some(fv1::any_flag::Value::StringValue("hearts".into()))
    );
    assert!(
        !all.flags.contains_key("legacy"),
        "disabled flags have no value to report"
    );

    // EvaluateAll over brainstem.v1.
    let every = client
        .flags
        .evaluate_all(EvaluateAllFlagsRequest { context: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(every.flags.len(), 7);

    // An override reaches Watch and changes the answer; clearing it returns to the file.
    client
        .flags
        .set_override(SetFlagOverrideRequest {
            key: "banner".into(),
            state: String::new(),
            default_variant: "on".into(),
            rollout: None,
        })
        .await
        .unwrap();
    assert_eq!(banner(&client).await, Some(json!(true)));
    let change = watch.message().await.unwrap().unwrap();
    assert_eq!(change.cause, "override");
    let bad = client
        .flags
        .set_override(SetFlagOverrideRequest {
            key: "banner".into(),
            state: "SOMETIMES".into(),
            default_variant: String::new(),
            rollout: Some(FlagRollout {
                variant: "maybe".into(),
                percent: 150,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let listed = client
        .flags
        .list(ListFlagsRequest {})
        .await
        .unwrap()
        .into_inner();
    let info = listed.flags.iter().find(|f| f.key == "banner").unwrap();
    assert_eq!(info.r#override.as_ref().unwrap().default_variant, "on");
    assert!(
        client
            .flags
            .clear_override(ClearFlagOverrideRequest {
                key: "banner".into()
            })
            .await
            .unwrap()
            .into_inner()
            .cleared
    );
    assert_eq!(banner(&client).await, Some(json!(false)));

    // A broken file is refused: the old flags keep serving; List shows why.
    std::fs::write(&file, "{\"flags\": {\"banner\": ").unwrap();
    let source = eventually("List to show the refusal", Duration::from_secs(10), || {
        let mut flags = client.flags.clone();
        async move {
            let source = flags
                .list(ListFlagsRequest {})
                .await
                .ok()?
                .into_inner()
                .source?;
            (source.refused > 0).then_some(source)
        }
    })
    .await;
    assert!(source.last_error.contains("not JSON"), "{source:?}");
    assert_eq!(banner(&client).await, Some(json!(false)));
    // The fixed file is applied and the error clears.
    std::fs::write(&file, definitions("on")).unwrap();
    eventually(
        "the fixed file to serve",
        Duration::from_secs(10),
        || async { (banner(&client).await == Some(json!(true))).then_some(()) },
    )
    .await;
    let source = client
        .flags
        .list(ListFlagsRequest {})
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(source.last_error, "");

    drop((watch, events));
    assert_eq!(daemon.stop().await, 0);
}

async fn next_of(
    events: &mut tonic::Streaming<fv2::EventStreamResponse>,
    kind: &str,
) -> fv2::EventStreamResponse {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.message().await.expect("event").expect("stream open");
            if event.r#type == kind {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} within 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_without_flags_evaluate_is_denied() {
    let daemon = InProcess::start("", "").await;
    let options = options_for(&daemon.state_dir, daemon.addr(), "stranger");
    let channel: Channel = options.channel().await.unwrap();
    let mut v2 = fv2::service_client::ServiceClient::new(channel.clone());
    let denied = v2
        .resolve_boolean(fv2::ResolveBooleanRequest {
            flag_key: "modules.vision".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(daemon.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_survive_a_restart_of_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    client
        .flags
        .set_override(SetFlagOverrideRequest {
            key: "safety.dry_run_mode".into(),
            state: String::new(),
            default_variant: "on".into(),
            rollout: None,
        })
        .await
        .unwrap();
    daemon.stop().await;

    let daemon = DaemonProcess::start_in(dir.path()).await;
    let mut client = daemon.client().await;
    let (value, variant, _) = evaluate(&mut client, "safety.dry_run_mode", json!({}))
        .await
        .unwrap();
    assert_eq!((value, variant.as_str()), (json!(true), "on"));
    client
        .flags
        .clear_override(ClearFlagOverrideRequest {
            key: "safety.dry_run_mode".into(),
        })
        .await
        .unwrap();
    let (value, _, _) = evaluate(&mut client, "safety.dry_run_mode", json!({}))
        .await
        .unwrap();
    assert_eq!(value, json!(false));

    // The same through brainstemctl.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::bin("brainstemctl"))
            .arg("--endpoint")
            .arg(daemon.grpc_addr.to_string())
            .arg("--state-dir")
            .arg(&daemon.state_dir)
            .args(["-o", "json", "flags"])
            .args(args)
            .output()
            .expect("run brainstemctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            serde_json::from_str::<Value>(text.trim()).unwrap_or(Value::Null),
        )
    };
    let (code, set) = ctl(&["set", "modules.voice", "--state", "disabled"]);
    assert_eq!(code, Some(0), "{set}");
    let (_, eval) = ctl(&["eval", "modules.voice"]);
    assert_eq!(
        (eval["value"].clone(), eval["reason"].clone()),
        (Value::Null, json!("DISABLED"))
    );
    let (_, listed) = ctl(&["list"]);
    let voice = listed["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "modules.voice")
        .unwrap();
    assert_eq!(voice["effective_state"], json!("DISABLED"));
    let (code, cleared) = ctl(&["clear", "modules.voice"]);
    assert_eq!((code, cleared["cleared"].clone()), (Some(0), json!(true)));
    let (code, status) = ctl(&["status"]);
    assert_eq!(
        (code, status["using_defaults"].clone()),
        (Some(0), json!(true))
    );
    let (code, _) = ctl(&["eval", "no.such.flag"]);
    assert_ne!(code, Some(0));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_when_the_watch_is_off() {
    let daemon = InProcess::start("", "[flags]\nwatch = false\n").await;
    let client = daemon.client().await;
    std::fs::write(daemon.state_dir.join("flags.json"), definitions("off")).unwrap();
    // Nothing watches the file: the defaults keep serving until SIGHUP.
    assert_eq!(
        banner(&client).await,
        None,
        "banner is not defined by the shipped defaults"
    );
    // The flags-watch worker of this in-process daemon listens for SIGHUP (no other handler in this
    // test process would act on it; other in-process daemons only re-read an unchanged file).
    // SAFETY: kill(2) on our own pid with a valid signal number.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    eventually(
        "SIGHUP to load the file",
        Duration::from_secs(10),
        || async { (banner(&client).await == Some(json!(false))).then_some(()) },
    )
    .await;
    assert_eq!(daemon.stop().await, 0);
}

/// A tonic channel over the unix socket at `path`.
async fn unix_channel(path: std::path::PathBuf) -> Channel {
    tonic::transport::Endpoint::from_static("http://flagd.local")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .expect("connects to the flag socket")
}

/// The flag-evaluation unix socket: a granted uid resolves flags over both protocol versions and
/// nothing else is served there; an ungranted uid is refused; the file has the configured mode
/// and is gone after the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_serves_flag_evaluation_to_granted_uids_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let socket = "[flags]\nsocket_path = \"flagd.sock\"\nsocket_mode = 0o600\n";
    let granted = format!(
        "{socket}[[grants]]\nprincipal = \"unix:uid:{uid}\"\ncapabilities = [\"flags.evaluate\"]\n"
    );
    let daemon = InProcess::start("", &granted).await;
    let path = daemon.state_dir.join("flagd.sock");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let channel = unix_channel(path.clone()).await;
    let mut v2 = fv2::service_client::ServiceClient::new(channel.clone());
    let resolved = v2
        .resolve_boolean(fv2::ResolveBooleanRequest {
            flag_key: "modules.vision".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.value, Some(true));
    let mut v1 = fv1::service_client::ServiceClient::new(channel.clone());
    let all = v1
        .resolve_all(fv1::ResolveAllRequest { context: None })
        .await
        .unwrap()
        .into_inner();
    assert!(all.flags.contains_key("safety.dry_run_mode"), "{all:?}");
    // Only flag evaluation is served on the socket, whatever the uid is granted.
    let mut flags = brainstem_client::v1::flags_client::FlagsClient::new(channel);
    let other = flags.list(ListFlagsRequest::default()).await.unwrap_err();
    assert_eq!(other.code(), Code::Unimplemented, "{other:?}");
    assert_eq!(daemon.stop().await, 0);
    assert!(!path.exists(), "the socket file is removed at stop");

    // Without a grant the uid is a principal like any other: PERMISSION_DENIED.
    let daemon = InProcess::start("", socket).await;
    let mut v2 = fv2::service_client::ServiceClient::new(
        unix_channel(daemon.state_dir.join("flagd.sock")).await,
    );
    let denied = v2
        .resolve_boolean(fv2::ResolveBooleanRequest {
            flag_key: "modules.vision".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains(&format!("unix:uid:{uid}")),
        "{denied:?}"
    );
    assert_eq!(daemon.stop().await, 0);
}

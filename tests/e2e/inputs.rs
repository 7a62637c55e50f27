//! Every bad input a clear answer: requests that do not decode answer INVALID_ARGUMENT (not INTERNAL),
//! and an error reply stays small whatever the request held, so a default client (16 KiB header
//! limit) reads the answer instead of failing on its size.

use brainstem_client::v1::{CheckRequest, ForgetRequest, IssueTokenRequest, PingRequest};
use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tonic::Code;
use tonic_types::StatusExt;

use crate::inprocess::{InProcess, RawReply, raw_call};

/// Far below the 16 KiB header limit of default clients.
const SMALL: usize = 4 * 1024;

/// `depth` Structs, each holding the next under "a".
fn nested(depth: usize) -> Struct {
    let mut inner = Struct::default();
    for _ in 1..depth {
        let value = Value {
            kind: Some(Kind::StructValue(inner)),
        };
        inner = Struct {
            fields: [("a".to_owned(), value)].into(),
        };
    }
    inner
}

fn decoded_message(reply: &RawReply) -> String {
    reply.message.replace("%20", " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_answer_invalid_argument() {
    let daemon = InProcess::start("", "").await;

    // Not protobuf: a varint that never ends.
    let reply = raw_call(&daemon, "/brainstem.v1.Admin/Ping", None, &[0xff; 16]).await;
    assert_eq!(reply.code, Code::InvalidArgument, "{}", reply.message);
    assert!(
        decoded_message(&reply).contains("could not be decoded"),
        "{}",
        reply.message
    );
    assert!(reply.status_block_bytes < SMALL);

    // A string field (VerifyTokenRequest.token, field 1) that is not UTF-8.
    let not_utf8 = [0x0a, 0x02, 0xc3, 0x28];
    let reply = raw_call(&daemon, "/brainstem.v1.Tokens/Verify", None, &not_utf8).await;
    assert_eq!(reply.code, Code::InvalidArgument, "{}", reply.message);
    assert!(reply.message.contains("UTF-8"), "{}", reply.message);

    // A string field cut short: it announces 16 bytes and one follows.
    let reply = raw_call(
        &daemon,
        "/brainstem.v1.Tokens/Verify",
        None,
        &[0x0a, 0x10, b'x'],
    )
    .await;
    assert_eq!(reply.code, Code::InvalidArgument, "{}", reply.message);

    // The documented nesting limit (docs/API.md): a Struct 32 deep always decodes; deeper may not
    // (prost stops at 100 message levels; in Policy.Check's context that is 35 Structs).
    let check = |depth| CheckRequest {
        action: "web.read".to_owned(),
        context: Some(nested(depth)),
        ..CheckRequest::default()
    };
    let path = "/brainstem.v1.Policy/Check";
    let reply = raw_call(&daemon, path, None, &check(32).encode_to_vec()).await;
    assert!(
        !decoded_message(&reply).contains("could not be decoded") && reply.code != Code::Internal,
        "{:?}: {}",
        reply.code,
        reply.message
    );
    let reply = raw_call(&daemon, path, None, &check(35).encode_to_vec()).await;
    assert_eq!(reply.code, Code::InvalidArgument, "{}", reply.message);
    let message = decoded_message(&reply);
    assert!(message.contains("nested too deeply"), "{message}");
    assert!(
        !message.contains("Struct.fields"),
        "no decoder path: {message}"
    );
    assert!(reply.status_block_bytes < SMALL);

    // A well-formed call on a fresh connection still works.
    let mut client = daemon.client().await;
    client.admin.ping(PingRequest::default()).await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_stay_small_whatever_the_request_held() {
    let daemon = InProcess::start("", "").await;
    let mut client = daemon.client().await;

    // A 1 MiB capability: its value is echoed cut to 128 bytes, the explanation kept.
    let err = client
        .tokens
        .issue(IssueTokenRequest {
            principal: "spiffe://brainstem.dev/agent".to_owned(),
            capabilities: vec!["X".repeat(1 << 20)],
            ttl_seconds: 60,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{:.200}", err.message());
    assert!(err.message().len() <= 2048, "{} bytes", err.message().len());
    assert!(err.details().len() < SMALL, "{} bytes", err.details().len());
    let details = err.get_error_details();
    let bad = details.bad_request().expect("BadRequest detail");
    let violation = &bad.field_violations[0];
    assert_eq!(violation.field, "capabilities[0]");
    assert!(
        violation
            .description
            .starts_with(&format!("\"{}…\": ", "X".repeat(128))),
        "{}",
        violation.description
    );

    // 100,000 ids that are not episode ids: the first 20 violations and a count of the rest.
    let ids: Vec<String> = (0..100_000).map(|i| format!("bad-{i}")).collect();
    let err = client
        .episodic
        .forget(ForgetRequest { ids, filter: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{:.200}", err.message());
    assert!(err.message().len() < SMALL, "{} bytes", err.message().len());
    assert!(err.details().len() < SMALL, "{} bytes", err.details().len());
    let details = err.get_error_details();
    let violations = &details
        .bad_request()
        .expect("BadRequest detail")
        .field_violations;
    assert_eq!(violations.len(), 21, "{violations:?}");
    let last = &violations[20].description;
    let rest: usize = last
        .strip_prefix("… and ")
        .and_then(|r| r.strip_suffix(" more"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a count of the rest: {last}"));
    assert!(rest >= 100_000 - 20, "{last}");
    assert!(err.message().ends_with(" more"), "{}", err.message());
    daemon.stop().await;
}

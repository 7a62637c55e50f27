//! The flags' gRPC adapters: `brainstem.v1.Flags` and the flagd evaluation protocol
//! (`flagd.evaluation.v2.Service`, `flagd.evaluation.v1.Service`), all over one [`Flags`].
//!
//! Three registrations share one state: [`REGISTRATION`] sets the flags up and its handler serves
//! all three services; [`FLAGD_V2_REGISTRATION`] and [`FLAGD_V1_REGISTRATION`] bring their method
//! tables, descriptors and health names (their own set-up step has nothing to do).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use brainstem_proto::flagd::evaluation::{v1 as fv1, v2 as fv2};
use brainstem_proto::json::{json_to_struct, json_to_value, struct_to_json};
use brainstem_proto::v1::flags_server::{Flags as FlagsApi, FlagsServer};
use brainstem_proto::v1::{
    ClearFlagOverrideReply, ClearFlagOverrideRequest, EvaluateAllFlagsReply,
    EvaluateAllFlagsRequest, EvaluateFlagReply, EvaluateFlagRequest, FlagChange, FlagEvaluation,
    FlagInfo, FlagKeyChange, FlagOverride, FlagRollout, FlagSource, ListFlagsReply,
    ListFlagsRequest, SetFlagOverrideReply, SetFlagOverrideRequest, WatchFlagsRequest,
};
use futures::Stream;
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::modules::ModuleSwitch;
use super::wire;
use super::{
    Change, EvalContext, FlagType, Flags, FlagsWatch, Metadata, OVERRIDES_TREE, Override,
    OverrideRequest, Reason, Resolution, Rollout, State,
};
use crate::access::audit::{AuditKind, AuditLog, AuditRecord};
use crate::access::caller;
use crate::daemon::StartError;
use crate::error::{FieldViolation, ServiceError, truncate_for_reply};
use crate::grpc::convert::timestamp_from_unix_ms as timestamp;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec, handler};
use crate::grpc::wire::{WireMethods, WireRoute};
use crate::store::unix_ms_now;

/// Evaluate flags (Flags.Evaluate/EvaluateAll/List and every flagd evaluation method).
pub const EVALUATE: &str = "flags.evaluate";
/// Set and clear runtime overrides.
pub const OVERRIDE: &str = "flags.override";
/// Follow changes (Flags.Watch; flagd's EventStream needs only `flags.evaluate`, as providers
/// open it with the credentials they evaluate with).
pub const WATCH: &str = "flags.watch";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn context_of(context: Option<&prost_types::Struct>) -> Value {
    Value::Object(context.map(struct_to_json).unwrap_or_default())
}

/// A request's context as it came: converted to JSON only when a targeting rule reads it, so a
/// static flag (or a rollout, which reads only `targetingKey`) costs no conversion.
struct WireContext<'a> {
    wire: Option<&'a prost_types::Struct>,
    json: std::cell::OnceCell<Value>,
}

impl<'a> WireContext<'a> {
    fn new(wire: Option<&'a prost_types::Struct>) -> Self {
        WireContext {
            wire,
            json: std::cell::OnceCell::new(),
        }
    }
}

impl EvalContext for WireContext<'_> {
    fn targeting_key(&self) -> Option<&str> {
        use prost_types::value::Kind;
        match self.wire?.fields.get("targetingKey")?.kind.as_ref()? {
            Kind::StringValue(key) => Some(key),
            _ => None,
        }
    }

    fn json(&self) -> &Value {
        self.json.get_or_init(|| context_of(self.wire))
    }
}

fn key_of(key: &str, field: &str) -> Result<(), ServiceError> {
    if key.is_empty() {
        return Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
            field,
            "required: the flag key",
        )]));
    }
    Ok(())
}

fn flag_type(t: FlagType) -> i32 {
    use brainstem_proto::v1::FlagType as P;
    (match t {
        FlagType::Boolean => P::Boolean,
        FlagType::String => P::String,
        FlagType::Integer => P::Integer,
        FlagType::Float => P::Float,
        FlagType::Object => P::Object,
    }) as i32
}

fn wanted_type(t: i32) -> Result<Option<FlagType>, ServiceError> {
    use brainstem_proto::v1::FlagType as P;
    Ok(match P::try_from(t) {
        Ok(P::Unspecified) => None,
        Ok(P::Boolean) => Some(FlagType::Boolean),
        Ok(P::String) => Some(FlagType::String),
        Ok(P::Integer) => Some(FlagType::Integer),
        Ok(P::Float) => Some(FlagType::Float),
        Ok(P::Object) => Some(FlagType::Object),
        Err(_) => {
            return Err(ServiceError::InvalidArgument(vec![FieldViolation::new(
                "type",
                format!("{t} is not a FlagType"),
            )]));
        }
    })
}

fn metadata(map: &Map<String, Value>) -> Option<prost_types::Struct> {
    Some(json_to_struct(map))
}

/// A resolution's metadata as the reply carries it (built at load; cloned, not converted).
fn resolved_metadata(metadata: &Metadata) -> Option<prost_types::Struct> {
    Some(metadata.wire().clone())
}

fn override_proto(o: &Override) -> FlagOverride {
    FlagOverride {
        state: o.state.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        default_variant: o.default_variant.clone().unwrap_or_default(),
        rollout: o.rollout.as_ref().map(|r| FlagRollout {
            variant: r.variant.clone(),
            percent: r.percent,
        }),
        set_by: o.set_by.clone(),
        set_at: Some(timestamp(o.set_at_unix_ms)),
    }
}

/// `brainstem.v1.Flags`.
pub struct FlagsService {
    flags: Arc<Flags>,
    audit: Arc<AuditLog>,
    stop: CancellationToken,
}

impl FlagsService {
    fn audit(&self, who: &str, action: &str, key: &str, detail: String) {
        let record = AuditRecord {
            seq: 0,
            time_unix_ms: unix_ms_now(),
            decision_id: self.audit.decision_id(),
            kind: AuditKind::Admin,
            caller: who.to_owned(),
            principal: who.to_owned(),
            action: action.to_owned(),
            resource: format!("flag:{key}"),
            allowed: true,
            reasons: vec![detail],
            correlation_id: String::new(),
            count: 1,
        };
        if let Err(err) = self.audit.record(record) {
            tracing::warn!(error = %err, flag = key, action, "flag override change not audited");
        }
    }
}

impl FlagsService {
    /// `Flags.Evaluate` as served: the context read from its bytes, the reply written from the
    /// resolution ([`super::wire`]). [`FlagsApi::evaluate`] is the same through the generated types.
    fn evaluate_wire(&self, request: wire::EvaluateRequest) -> Result<wire::EvaluateReply, Status> {
        key_of(&request.key, "key")?;
        let wanted = wanted_type(request.r#type)?;
        let context = wire::RawContext::new(request.context.as_deref());
        let resolution = self
            .flags
            .evaluate(&request.key, &context, wanted)
            .map_err(ServiceError::from)?;
        Ok(wire::EvaluateReply {
            r#type: flag_type(resolution.flag_type),
            resolution,
        })
    }
}

/// `brainstem.v1.Flags` as routed: `Evaluate` through [`WireCodec`](crate::grpc::wire::WireCodec)
/// (no generated types on the hot path), every other method through the generated server.
pub type FlagsRoute = WireRoute<FlagsServer<FlagsService>, FlagsWire>;

/// The `Flags` method served through the hand-written codec: `Evaluate`.
#[derive(Clone)]
pub struct FlagsWire(Arc<FlagsService>);

impl WireMethods for FlagsWire {
    type Request = wire::EvaluateRequest;
    type Reply = wire::EvaluateReply;
    type Method = EvaluateMethod;

    fn method(&self, name: &str) -> Option<EvaluateMethod> {
        (name == "Evaluate").then(|| EvaluateMethod(self.0.clone()))
    }
}

fn flags_route(service: FlagsService, max_message_bytes: usize) -> FlagsRoute {
    let service = Arc::new(service);
    WireRoute::new(
        FlagsServer::from_arc(service.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes),
        FlagsWire(service),
        max_message_bytes,
    )
}

/// `Flags.Evaluate` for [`tonic::server::Grpc::unary`]; evaluation does not wait, so no box.
pub struct EvaluateMethod(Arc<FlagsService>);

impl tonic::server::UnaryService<wire::EvaluateRequest> for EvaluateMethod {
    type Response = wire::EvaluateReply;
    type Future = std::future::Ready<Result<Response<wire::EvaluateReply>, Status>>;

    fn call(&mut self, request: Request<wire::EvaluateRequest>) -> Self::Future {
        std::future::ready(
            self.0
                .evaluate_wire(request.into_inner())
                .map(Response::new),
        )
    }
}

#[tonic::async_trait]
impl FlagsApi for FlagsService {
    async fn evaluate(
        &self,
        request: Request<EvaluateFlagRequest>,
    ) -> Result<Response<EvaluateFlagReply>, Status> {
        let request = request.into_inner();
        key_of(&request.key, "key")?;
        let wanted = wanted_type(request.r#type)?;
        let context = WireContext::new(request.context.as_ref());
        let resolution = self
            .flags
            .evaluate(&request.key, &context, wanted)
            .map_err(ServiceError::from)?;
        Ok(Response::new(EvaluateFlagReply {
            value: resolution.value.as_ref().map(json_to_value),
            variant: resolution.variant.unwrap_or_default(),
            reason: resolution.reason.as_str().to_owned(),
            metadata: resolved_metadata(&resolution.metadata),
            r#type: flag_type(resolution.flag_type),
        }))
    }

    async fn evaluate_all(
        &self,
        request: Request<EvaluateAllFlagsRequest>,
    ) -> Result<Response<EvaluateAllFlagsReply>, Status> {
        let context = context_of(request.get_ref().context.as_ref());
        let revision = self.flags.active().revision;
        let flags = self
            .flags
            .evaluate_all(&context)
            .into_iter()
            .map(|(key, result)| match result {
                Ok(r) => FlagEvaluation {
                    key,
                    value: r.value.as_ref().map(json_to_value),
                    variant: r.variant.unwrap_or_default(),
                    reason: r.reason.as_str().to_owned(),
                    error_code: String::new(),
                    error_message: String::new(),
                    r#type: flag_type(r.flag_type),
                },
                Err(err) => FlagEvaluation {
                    key,
                    value: None,
                    variant: String::new(),
                    reason: Reason::Error.as_str().to_owned(),
                    error_code: err.code().to_owned(),
                    error_message: err.to_string(),
                    r#type: 0,
                },
            })
            .collect();
        Ok(Response::new(EvaluateAllFlagsReply { flags, revision }))
    }

    async fn list(
        &self,
        _request: Request<ListFlagsRequest>,
    ) -> Result<Response<ListFlagsReply>, Status> {
        let active = self.flags.active();
        let status = self.flags.status();
        let flags = active
            .set
            .flags
            .values()
            .map(|flag| {
                let ov = active.overrides.get(&flag.key);
                FlagInfo {
                    key: flag.key.clone(),
                    state: flag.state.as_str().to_owned(),
                    r#type: flag_type(flag.flag_type),
                    variants: Some(json_to_struct(
                        &flag.variants.clone().into_iter().collect::<Map<_, _>>(),
                    )),
                    default_variant: flag.default_variant.clone().unwrap_or_default(),
                    targeting: flag.targeting_json.as_ref().map(json_to_value),
                    metadata: metadata(&flag.metadata),
                    r#override: ov.map(override_proto),
                    effective_state: ov
                        .and_then(|o| o.state)
                        .unwrap_or(flag.state)
                        .as_str()
                        .to_owned(),
                }
            })
            .collect();
        Ok(Response::new(ListFlagsReply {
            flags,
            source: Some(FlagSource {
                path: status.path.display().to_string(),
                using_defaults: status.using_defaults,
                loaded_at: Some(timestamp(status.loaded_at_unix_ms)),
                loads: status.loads,
                refused: status.refused,
                last_error: status.last_error.unwrap_or_default(),
                last_error_at: (status.last_error_at_unix_ms > 0)
                    .then(|| timestamp(status.last_error_at_unix_ms)),
                revision: active.revision,
            }),
        }))
    }

    async fn set_override(
        &self,
        request: Request<SetFlagOverrideRequest>,
    ) -> Result<Response<SetFlagOverrideReply>, Status> {
        let who = caller(&request)?.principal.name.clone();
        let request = request.into_inner();
        key_of(&request.key, "key")?;
        let state = match request.state.as_str() {
            "" => None,
            s => Some(State::parse(s).ok_or_else(|| {
                ServiceError::InvalidArgument(vec![FieldViolation::new(
                    "state",
                    format!(
                        "{:?} is not ENABLED, DISABLED or empty",
                        truncate_for_reply(s)
                    ),
                )])
            })?),
        };
        let wanted = OverrideRequest {
            state,
            default_variant: Some(request.default_variant).filter(|v| !v.is_empty()),
            rollout: request.rollout.map(|r| Rollout {
                variant: r.variant,
                percent: r.percent,
            }),
        };
        let detail = format!("set {wanted:?}");
        let set = self.flags.set_override(&request.key, wanted, &who).await?;
        self.audit(&who, "flags.override.set", &request.key, detail);
        Ok(Response::new(SetFlagOverrideReply {
            r#override: Some(override_proto(&set)),
        }))
    }

    async fn clear_override(
        &self,
        request: Request<ClearFlagOverrideRequest>,
    ) -> Result<Response<ClearFlagOverrideReply>, Status> {
        let who = caller(&request)?.principal.name.clone();
        let key = request.into_inner().key;
        key_of(&key, "key")?;
        let cleared = self.flags.clear_override(&key).await?;
        if cleared {
            self.audit(&who, "flags.override.clear", &key, "cleared".to_owned());
        }
        Ok(Response::new(ClearFlagOverrideReply { cleared }))
    }

    type WatchStream = BoxStream<FlagChange>;

    async fn watch(
        &self,
        _request: Request<WatchFlagsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let state = (self.flags.subscribe(), self.stop.clone());
        let stream = futures::stream::unfold(state, |(mut changes, stop)| async move {
            let item = tokio::select! {
                () = stop.cancelled() => return None,
                change = changes.recv() => match change {
                    Ok(change) => FlagChange {
                        revision: change.revision,
                        cause: change.cause.to_owned(),
                        flags: change
                            .flags
                            .iter()
                            .map(|(key, kind)| FlagKeyChange {
                                key: key.clone(),
                                kind: kind.as_str().to_owned(),
                            })
                            .collect(),
                        resync: false,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => FlagChange {
                        resync: true,
                        ..FlagChange::default()
                    },
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(item), (changes, stop)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What both flagd protocol versions share: evaluation and the event stream.
#[derive(Clone)]
pub struct Flagd {
    flags: Arc<Flags>,
    keep_alive: Duration,
    stop: CancellationToken,
}

/// One EventStream message, before it is put in the version's type.
struct Event {
    kind: &'static str,
    data: Option<prost_types::Struct>,
}

impl Flagd {
    fn resolve(
        &self,
        key: &str,
        context: Option<&prost_types::Struct>,
        wanted: FlagType,
    ) -> Result<Resolution, Status> {
        key_of(key, "flag_key")?;
        let context = WireContext::new(context);
        Ok(self
            .flags
            .evaluate(key, &context, Some(wanted))
            .map_err(ServiceError::from)?)
    }

    /// provider_ready at once, then configuration_change per change, keep_alive after silence.
    fn events(&self) -> impl Stream<Item = Event> + Send + 'static {
        // Subscribed before provider_ready is sent, so no change after it is missed.
        let state = (
            true,
            self.flags.subscribe(),
            self.stop.clone(),
            self.keep_alive,
            self.flags.path().display().to_string(),
        );
        futures::stream::unfold(
            state,
            |(first, mut changes, stop, keep_alive, source)| async move {
                if first {
                    let ready = Event {
                        kind: "provider_ready",
                        data: None,
                    };
                    return Some((ready, (false, changes, stop, keep_alive, source)));
                }
                let event = tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(keep_alive) => Event { kind: "keep_alive", data: None },
                    change = changes.recv() => match change {
                        Ok(change) => configuration_change(&change, &source),
                        // Fell behind: every flag may have changed; providers re-read them all.
                        Err(broadcast::error::RecvError::Lagged(_)) => Event {
                            kind: "configuration_change",
                            data: None,
                        },
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                };
                Some((event, (false, changes, stop, keep_alive, source)))
            },
        )
    }
}

fn configuration_change(change: &Change, source: &str) -> Event {
    let flags: Map<String, Value> = change
        .flags
        .iter()
        .map(|(key, kind)| {
            (
                key.clone(),
                serde_json::json!({"type": kind.as_str(), "source": source, "flagKey": key}),
            )
        })
        .collect();
    let mut data = Map::new();
    data.insert("flags".to_owned(), Value::Object(flags));
    Event {
        kind: "configuration_change",
        data: Some(json_to_struct(&data)),
    }
}

fn number(value: &Option<Value>) -> Option<f64> {
    value.as_ref().and_then(Value::as_f64)
}

fn object(value: &Option<Value>) -> Option<prost_types::Struct> {
    match value {
        Some(Value::Object(map)) => Some(json_to_struct(map)),
        _ => None,
    }
}

/// Implements one flagd version's typed resolvers. v2 leaves value and variant unset when there is
/// no value (disabled, no default variant); v1 sends zero values and an empty variant.
macro_rules! flagd_service {
    ($module:ident, $server:ident, $wrap:ident, $post:ident, { $($extra:tt)* }) => {
        #[tonic::async_trait]
        impl $module::service_server::Service for $server {
            async fn resolve_boolean(
                &self,
                request: Request<$module::ResolveBooleanRequest>,
            ) -> Result<Response<$module::ResolveBooleanResponse>, Status> {
                let request = request.into_inner();
                let r = $post(self.0.resolve(&request.flag_key, request.context.as_ref(), FlagType::Boolean)?, &request.flag_key)?;
                Ok(Response::new($module::ResolveBooleanResponse {
                    value: $wrap(r.value.as_ref().and_then(Value::as_bool)),
                    reason: r.reason.as_str().to_owned(),
                    variant: $wrap(r.variant),
                    metadata: resolved_metadata(&r.metadata),
                }))
            }

            async fn resolve_string(
                &self,
                request: Request<$module::ResolveStringRequest>,
            ) -> Result<Response<$module::ResolveStringResponse>, Status> {
                let request = request.into_inner();
                let r = $post(self.0.resolve(&request.flag_key, request.context.as_ref(), FlagType::String)?, &request.flag_key)?;
                Ok(Response::new($module::ResolveStringResponse {
                    value: $wrap(r.value.as_ref().and_then(Value::as_str).map(str::to_owned)),
                    reason: r.reason.as_str().to_owned(),
                    variant: $wrap(r.variant),
                    metadata: resolved_metadata(&r.metadata),
                }))
            }

            async fn resolve_float(
                &self,
                request: Request<$module::ResolveFloatRequest>,
            ) -> Result<Response<$module::ResolveFloatResponse>, Status> {
                let request = request.into_inner();
                let r = $post(self.0.resolve(&request.flag_key, request.context.as_ref(), FlagType::Float)?, &request.flag_key)?;
                Ok(Response::new($module::ResolveFloatResponse {
                    value: $wrap(number(&r.value)),
                    reason: r.reason.as_str().to_owned(),
                    variant: $wrap(r.variant),
                    metadata: resolved_metadata(&r.metadata),
                }))
            }

            async fn resolve_int(
                &self,
                request: Request<$module::ResolveIntRequest>,
            ) -> Result<Response<$module::ResolveIntResponse>, Status> {
                let request = request.into_inner();
                let r = $post(self.0.resolve(&request.flag_key, request.context.as_ref(), FlagType::Integer)?, &request.flag_key)?;
                Ok(Response::new($module::ResolveIntResponse {
                    // As flagd: the number read as a float, then truncated.
                    value: $wrap(number(&r.value).map(|f| f as i64)),
                    reason: r.reason.as_str().to_owned(),
                    variant: $wrap(r.variant),
                    metadata: resolved_metadata(&r.metadata),
                }))
            }

            async fn resolve_object(
                &self,
                request: Request<$module::ResolveObjectRequest>,
            ) -> Result<Response<$module::ResolveObjectResponse>, Status> {
                let request = request.into_inner();
                let r = $post(self.0.resolve(&request.flag_key, request.context.as_ref(), FlagType::Object)?, &request.flag_key)?;
                Ok(Response::new($module::ResolveObjectResponse {
                    value: object(&r.value),
                    reason: r.reason.as_str().to_owned(),
                    variant: $wrap(r.variant),
                    metadata: resolved_metadata(&r.metadata),
                }))
            }

            type EventStreamStream = BoxStream<$module::EventStreamResponse>;

            async fn event_stream(
                &self,
                _request: Request<$module::EventStreamRequest>,
            ) -> Result<Response<Self::EventStreamStream>, Status> {
                use futures::StreamExt;
                let stream = self.0.events().map(|event| {
                    Ok($module::EventStreamResponse {
                        r#type: event.kind.to_owned(),
                        data: event.data,
                    })
                });
                Ok(Response::new(Box::pin(stream)))
            }

            $($extra)*
        }
    };
}

/// v2: unset stays unset.
fn optional<T>(value: Option<T>) -> Option<T> {
    value
}

/// v1: unset is the zero value.
fn zero<T: Default>(value: Option<T>) -> T {
    value.unwrap_or_default()
}

/// v2: a flag without a value (no default variant, nothing matched) answers reason DEFAULT with
/// value and variant unset; the provider uses the caller's default.
fn as_is(r: Resolution, _key: &str) -> Result<Resolution, Status> {
    Ok(r)
}

/// v1 has no way to say "no value": flagd answers NOT_FOUND there, and so do we.
fn no_fallback(r: Resolution, key: &str) -> Result<Resolution, Status> {
    if r.reason == Reason::Default && r.value.is_none() {
        return Err(ServiceError::NotFound(format!(
            "flag {:?} has no default variant and its targeting matched nothing",
            truncate_for_reply(key)
        ))
        .into());
    }
    Ok(r)
}

/// A flagd evaluation service as routed: the typed `Resolve*` methods through
/// [`WireCodec`](crate::grpc::wire::WireCodec) (the context read lazily, the reply written from the
/// resolution, as `Flags.Evaluate`), `ResolveAll` and `EventStream` through the generated server `S`.
pub type FlagdRoute<S> = WireRoute<S, FlagdWire>;

/// The flagd methods served through the hand-written codec: the typed `Resolve*` of one version.
#[derive(Clone)]
pub struct FlagdWire {
    flagd: Flagd,
    version: wire::FlagdVersion,
}

impl WireMethods for FlagdWire {
    type Request = wire::ResolveRequest;
    type Reply = wire::ResolveReply;
    type Method = ResolveMethod;

    fn method(&self, name: &str) -> Option<ResolveMethod> {
        let flag_type = match name {
            "ResolveBoolean" => FlagType::Boolean,
            "ResolveString" => FlagType::String,
            "ResolveInt" => FlagType::Integer,
            "ResolveFloat" => FlagType::Float,
            "ResolveObject" => FlagType::Object,
            _ => return None,
        };
        Some(ResolveMethod {
            flagd: self.flagd.clone(),
            version: self.version,
            flag_type,
        })
    }
}

/// One typed flagd `Resolve*` method for [`tonic::server::Grpc::unary`].
pub struct ResolveMethod {
    flagd: Flagd,
    version: wire::FlagdVersion,
    flag_type: FlagType,
}

impl tonic::server::UnaryService<wire::ResolveRequest> for ResolveMethod {
    type Response = wire::ResolveReply;
    type Future = std::future::Ready<Result<Response<wire::ResolveReply>, Status>>;

    fn call(&mut self, request: Request<wire::ResolveRequest>) -> Self::Future {
        std::future::ready(self.resolve(request.into_inner().0).map(Response::new))
    }
}

impl ResolveMethod {
    /// What the generated v1/v2 adapters do (`flagd_service!`), written by [`wire::ResolveReply`].
    fn resolve(&self, request: wire::EvaluateRequest) -> Result<wire::ResolveReply, Status> {
        key_of(&request.key, "flag_key")?;
        let context = wire::RawContext::new(request.context.as_deref());
        let resolution = self
            .flagd
            .flags
            .evaluate(&request.key, &context, Some(self.flag_type))
            .map_err(ServiceError::from)?;
        let resolution = match self.version {
            wire::FlagdVersion::V2 => as_is(resolution, &request.key)?,
            wire::FlagdVersion::V1 => no_fallback(resolution, &request.key)?,
        };
        Ok(wire::ResolveReply {
            resolution,
            flag_type: self.flag_type,
            version: self.version,
        })
    }
}

impl Flagd {
    fn v2_route(
        &self,
        max_message_bytes: usize,
    ) -> FlagdRoute<fv2::service_server::ServiceServer<FlagdV2>> {
        WireRoute::new(
            fv2::service_server::ServiceServer::new(FlagdV2(self.clone()))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            FlagdWire {
                flagd: self.clone(),
                version: wire::FlagdVersion::V2,
            },
            max_message_bytes,
        )
    }

    fn v1_route(
        &self,
        max_message_bytes: usize,
    ) -> FlagdRoute<fv1::service_server::ServiceServer<FlagdV1>> {
        WireRoute::new(
            fv1::service_server::ServiceServer::new(FlagdV1(self.clone()))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            FlagdWire {
                flagd: self.clone(),
                version: wire::FlagdVersion::V1,
            },
            max_message_bytes,
        )
    }
}

/// `flagd.evaluation.v2.Service`.
pub struct FlagdV2(Flagd);
/// `flagd.evaluation.v1.Service`.
pub struct FlagdV1(Flagd);

flagd_service!(fv2, FlagdV2, optional, as_is, {});
flagd_service!(fv1, FlagdV1, zero, no_fallback, {
    async fn resolve_all(
        &self,
        request: Request<fv1::ResolveAllRequest>,
    ) -> Result<Response<fv1::ResolveAllResponse>, Status> {
        Ok(Response::new(self.resolve_all_flags(request.get_ref())))
    }
});

impl FlagdV1 {
    /// v1 ResolveAll: every flag that resolves to a value (flagd leaves out the others).
    fn resolve_all_flags(&self, request: &fv1::ResolveAllRequest) -> fv1::ResolveAllResponse {
        let context = context_of(request.context.as_ref());
        let active = self.0.flags.active();
        let flags = self
            .0
            .flags
            .evaluate_all(&context)
            .into_iter()
            .filter_map(|(key, result)| {
                let r = result.ok()?;
                let value = match r.value.as_ref()? {
                    Value::Bool(b) => fv1::any_flag::Value::BoolValue(*b),
                    Value::String(s) => fv1::any_flag::Value::StringValue(s.clone()),
                    Value::Number(n) => fv1::any_flag::Value::DoubleValue(n.as_f64()?),
                    Value::Object(map) => fv1::any_flag::Value::ObjectValue(json_to_struct(map)),
                    Value::Null | Value::Array(_) => return None,
                };
                Some((
                    key,
                    fv1::AnyFlag {
                        reason: r.reason.as_str().to_owned(),
                        variant: r.variant.unwrap_or_default(),
                        value: Some(value),
                        metadata: resolved_metadata(&r.metadata),
                    },
                ))
            })
            .collect();
        fv1::ResolveAllResponse {
            flags,
            metadata: metadata(&active.set.metadata),
        }
    }
}

const FLAGS_METHODS: &[(&str, Requirement)] = &[
    (
        "/brainstem.v1.Flags/Evaluate",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/brainstem.v1.Flags/EvaluateAll",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/brainstem.v1.Flags/List",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/brainstem.v1.Flags/SetOverride",
        Requirement::Capability(OVERRIDE),
    ),
    (
        "/brainstem.v1.Flags/ClearOverride",
        Requirement::Capability(OVERRIDE),
    ),
    ("/brainstem.v1.Flags/Watch", Requirement::Capability(WATCH)),
];

const FLAGD_V2_METHODS: &[(&str, Requirement)] = &[
    (
        "/flagd.evaluation.v2.Service/ResolveBoolean",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v2.Service/ResolveString",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v2.Service/ResolveFloat",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v2.Service/ResolveInt",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v2.Service/ResolveObject",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v2.Service/EventStream",
        Requirement::Capability(EVALUATE),
    ),
];

const FLAGD_V1_METHODS: &[(&str, Requirement)] = &[
    (
        "/flagd.evaluation.v1.Service/ResolveAll",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v1.Service/ResolveBoolean",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v1.Service/ResolveString",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v1.Service/ResolveFloat",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v1.Service/ResolveInt",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v1.Service/ResolveObject",
        Requirement::Capability(EVALUATE),
    ),
    (
        "/flagd.evaluation.v1.Service/EventStream",
        Requirement::Capability(EVALUATE),
    ),
];

/// `brainstem.v1.Flags`; its handler also serves both flagd versions (one [`Flags`] for all).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Flags",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: FLAGS_METHODS,
    },
    describe: super::events::describe,
    setup: |setup| {
        let config = &setup.config.flags;
        if !config.enabled {
            return Ok(None);
        }
        let path = config.path(setup.config);
        let tree = setup.store.tree(OVERRIDES_TREE)?;
        let flags = Arc::new(Flags::open(&path, tree).map_err(|err| StartError::Setup {
            service: "brainstem.v1.Flags",
            source: err.into(),
        })?);
        setup.actors.add_worker(FlagsWatch::new(
            flags.clone(),
            config.watch,
            Duration::from_millis(config.settle_ms),
        ));
        let (supervisor_tx, supervisor_rx) = tokio::sync::watch::channel(None);
        setup.actors.add_worker(ModuleSwitch::new(
            flags.clone(),
            supervisor_rx,
            super::modules::MODULES,
        ));
        // The flag-evaluation unix socket, bound now so a bad path stops the start with its reason.
        let (socket_tx, socket_rx) = tokio::sync::watch::channel(None);
        if let Some(path) = config.socket(setup.config) {
            let listener =
                super::socket::bind(&path, config.socket_mode as u32).map_err(|err| {
                    StartError::Setup {
                        service: "flagd evaluation socket",
                        source: format!("[flags] socket_path {}: {err}", path.display()).into(),
                    }
                })?;
            setup.actors.add_worker(super::socket::FlagsSocket::new(
                path,
                listener,
                config.socket_max_connections as usize,
                socket_rx,
            ));
        }
        let request_timeout = Duration::from_secs(setup.config.server.request_timeout_seconds);
        let keep_alive = Duration::from_secs(config.keep_alive_seconds);
        Ok(Some(handler(move |shared, routes, limits| {
            // The flags-modules worker drives actors through the running supervisor, and dry-run
            // mode through the access layer.
            supervisor_tx.send_replace(Some(super::modules::Driven {
                supervisor: shared.supervisor.clone(),
                access: shared.access.clone(),
            }));
            let flagd = Flagd {
                flags: flags.clone(),
                keep_alive,
                stop: shared.server_token.clone(),
            };
            routes.add_service(flags_route(
                FlagsService {
                    flags,
                    audit: shared.access.audit.clone(),
                    stop: shared.server_token.clone(),
                },
                limits.max_message_bytes,
            ));
            let max = limits.max_message_bytes;
            routes.add_service(flagd.v2_route(max));
            // The unix socket serves the flagd evaluation services alone.
            let mut socket_routes = tonic::service::RoutesBuilder::default();
            socket_routes.add_service(flagd.v2_route(max));
            socket_routes.add_service(flagd.v1_route(max));
            socket_tx.send_replace(Some(super::socket::Serving {
                routes: socket_routes.routes(),
                access: shared.access.clone(),
                tokens: shared.tokens.clone(),
                request_timeout,
            }));
            routes.add_service(flagd.v1_route(max));
        })))
    },
};

/// `flagd.evaluation.v2.Service` (served by [`REGISTRATION`]'s handler).
pub const FLAGD_V2_REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "flagd.evaluation.v2.Service",
        descriptors: brainstem_proto::flagd::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: FLAGD_V2_METHODS,
    },
    describe: super::events::describe,
    setup: |_| Ok(None),
};

/// `flagd.evaluation.v1.Service` (served by [`REGISTRATION`]'s handler).
pub const FLAGD_V1_REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "flagd.evaluation.v1.Service",
        descriptors: brainstem_proto::flagd::FILE_DESCRIPTOR_SET,
        health: Health::Daemon,
        methods: FLAGD_V1_METHODS,
    },
    describe: super::events::describe,
    setup: |_| Ok(None),
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::flags::{Active, definition, evaluate_in};

    fn wire(context: Value) -> prost_types::Struct {
        let Value::Object(map) = context else {
            unreachable!()
        };
        json_to_struct(&map)
    }

    /// The hand-written flagd `Resolve*` routes answer byte for byte as the generated adapters
    /// (`flagd_service!`) do, in both versions, for every type, value and reason (zero values,
    /// disabled, no default variant, targeting, a rollout), and refuse with the same status.
    #[tokio::test]
    async fn flagd_resolves_write_what_the_generated_adapters_write() {
        use prost::Message;

        use crate::flags::OverrideRequest;
        use crate::store::Store;
        use crate::store::config::{FlushPolicy, StoreConfig};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        let flag = |variants: Value, default: Value| json!({"state": "ENABLED", "variants": variants, "defaultVariant": default});
        let mut defs = json!({
            "yes": flag(json!({"on": true, "off": false}), json!("on")),
            "no": flag(json!({"on": true, "off": false}), json!("off")),
            "text": flag(json!({"empty": "", "full": "ünï"}), json!("full")),
            "blank": flag(json!({"empty": "", "full": "x"}), json!("empty")),
            "zero": flag(json!({"z": 0, "n": -3}), json!("z")),
            "negative": flag(json!({"z": 0, "n": -3}), json!("n")),
            "ratio": flag(json!({"z": 0.0, "h": 2.5}), json!("h")),
            "nought": flag(json!({"z": 0.0, "h": 2.5}), json!("z")),
            "shape": flag(json!({"e": {}, "full": {"b": [1, {"c": null}], "a": "x"}}), json!("full")),
            "hollow": flag(json!({"e": {}, "full": {"a": 1}}), json!("e")),
            "off": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"},
            "nodefault": flag(json!({"on": true, "off": false}), json!(null)),
            "rule": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
                "targeting": {"if": [{"ends_with": [{"var": "email"}, "@x.org"]}, "b"]},
                "metadata": {"owner": "web", "n": 2}},
            "split": flag(json!({"a": 1.5, "b": 2}), json!("a")),
        });
        defs["wrong"] = json!({"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a",
            "targeting": {"if": [true, "nope"]}});
        let file = json!({"flags": defs, "metadata": {"flagSetId": "t", "version": 3}});
        std::fs::write(&path, file.to_string()).unwrap();
        let config = StoreConfig {
            flush: FlushPolicy::Always,
            flush_interval_ms: 100,
            cache_capacity_bytes: 8 << 20,
            min_free_bytes: 0,
        };
        let store = Store::open(&dir.path().join("state"), &config).unwrap();
        let flags = Arc::new(Flags::open(&path, store.tree(OVERRIDES_TREE).unwrap()).unwrap());
        let rollout = OverrideRequest {
            rollout: Some(Rollout {
                variant: "b".into(),
                percent: 100,
            }),
            ..OverrideRequest::default()
        };
        flags.set_override("split", rollout, "t").await.unwrap();
        let flagd = Flagd {
            flags: flags.clone(),
            keep_alive: Duration::from_secs(20),
            stop: CancellationToken::new(),
        };
        let mut keys: Vec<String> = file["flags"].as_object().unwrap().keys().cloned().collect();
        keys.extend(["missing".to_owned(), String::new()]);
        let contexts = [
            None,
            Some(json!({"email": "a@x.org", "targetingKey": "k"})),
            Some(json!({"email": "a@y.org"})),
        ];
        macro_rules! generated {
            ($module:ident, $server:ident, $method:ident, $request:ident, $key:expr, $context:expr) => {
                $server(flagd.clone())
                    .$method(Request::new($module::$request {
                        flag_key: $key.clone(),
                        context: $context.clone(),
                    }))
                    .await
                    .map(|r| r.into_inner().encode_to_vec())
            };
        }
        use fv1::service_server::Service as V1;
        use fv2::service_server::Service as V2;
        use wire::FlagdVersion::{V1 as One, V2 as Two};
        let mut compared = (0, 0);
        for key in &keys {
            for context in &contexts {
                let proto = context.clone().map(wire);
                for version in [One, Two] {
                    for flag_type in [
                        FlagType::Boolean,
                        FlagType::String,
                        FlagType::Integer,
                        FlagType::Float,
                        FlagType::Object,
                    ] {
                        let want = match (version, flag_type) {
                            (Two, FlagType::Boolean) => generated!(
                                fv2,
                                FlagdV2,
                                resolve_boolean,
                                ResolveBooleanRequest,
                                key,
                                proto
                            ),
                            (Two, FlagType::String) => generated!(
                                fv2,
                                FlagdV2,
                                resolve_string,
                                ResolveStringRequest,
                                key,
                                proto
                            ),
                            (Two, FlagType::Integer) => {
                                generated!(fv2, FlagdV2, resolve_int, ResolveIntRequest, key, proto)
                            }
                            (Two, FlagType::Float) => generated!(
                                fv2,
                                FlagdV2,
                                resolve_float,
                                ResolveFloatRequest,
                                key,
                                proto
                            ),
                            (Two, FlagType::Object) => generated!(
                                fv2,
                                FlagdV2,
                                resolve_object,
                                ResolveObjectRequest,
                                key,
                                proto
                            ),
                            (One, FlagType::Boolean) => generated!(
                                fv1,
                                FlagdV1,
                                resolve_boolean,
                                ResolveBooleanRequest,
                                key,
                                proto
                            ),
                            (One, FlagType::String) => generated!(
                                fv1,
                                FlagdV1,
                                resolve_string,
                                ResolveStringRequest,
                                key,
                                proto
                            ),
                            (One, FlagType::Integer) => {
                                generated!(fv1, FlagdV1, resolve_int, ResolveIntRequest, key, proto)
                            }
                            (One, FlagType::Float) => generated!(
                                fv1,
                                FlagdV1,
                                resolve_float,
                                ResolveFloatRequest,
                                key,
                                proto
                            ),
                            (One, FlagType::Object) => generated!(
                                fv1,
                                FlagdV1,
                                resolve_object,
                                ResolveObjectRequest,
                                key,
                                proto
                            ),
                        };
                        let method = ResolveMethod {
                            flagd: flagd.clone(),
                            version,
                            flag_type,
                        };
                        let request = wire::EvaluateRequest {
                            key: key.clone(),
                            context: proto.as_ref().map(|c| c.encode_to_vec().into()),
                            r#type: 0,
                        };
                        let got = method.resolve(request).map(|reply| {
                            let mut bytes = Vec::new();
                            crate::grpc::wire::WireReply::encode(&reply, &mut bytes);
                            assert_eq!(
                                crate::grpc::wire::WireReply::encoded_len(&reply),
                                bytes.len()
                            );
                            bytes
                        });
                        let what = format!("{key} {version:?} {flag_type:?} {context:?}");
                        match (want, got) {
                            (Ok(want), Ok(got)) => {
                                assert_eq!(got, want, "{what}");
                                compared.0 += 1;
                            }
                            (Err(want), Err(got)) => {
                                assert_eq!(
                                    (got.code(), got.message()),
                                    (want.code(), want.message()),
                                    "{what}"
                                );
                                compared.1 += 1;
                            }
                            (want, got) => panic!("{what}: {want:?} / {got:?}"),
                        }
                    }
                }
            }
        }
        // Both kinds of outcome were compared, in numbers.
        assert!(compared.0 > 100 && compared.1 > 100, "{compared:?}");
        drop(flagd);
        drop(flags);
        store.close().unwrap();
    }

    /// A request's context read in its wire form gives the same resolutions as the same context
    /// converted to JSON first: static, targeting and rollout flags, with and without a context.
    #[test]
    fn the_wire_context_evaluates_as_its_json() {
        let set = definition::parse(
            &json!({"flags": {
                "static": {"state": "ENABLED", "variants": {"on": true, "off": false},
                    "defaultVariant": "off"},
                "rule": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a",
                    "targeting": {"if": [{"ends_with": [{"var": "user.email"}, "@x.org"]}, "b"]}},
                "split": {"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a"},
            }})
            .to_string(),
        )
        .unwrap();
        let overrides = BTreeMap::from([(
            "split".to_owned(),
            Override {
                state: None,
                default_variant: None,
                rollout: Some(Rollout {
                    variant: "b".into(),
                    percent: 50,
                }),
                set_by: "t".into(),
                set_at_unix_ms: 0,
            },
        )]);
        let active = Active {
            set: Arc::new(set),
            overrides: Arc::new(overrides),
            revision: 1,
        };
        let contexts = [
            None,
            Some(json!({})),
            Some(json!({"targetingKey": 7, "user": {"email": "a@x.org"}})),
            Some(json!({"targetingKey": "k-1", "user": {"email": "a@y.org"}})),
        ]
        .into_iter()
        .chain((0..40).map(|i| Some(json!({"targetingKey": format!("user-{i}")}))));
        let mut reasons = std::collections::BTreeSet::new();
        for context in contexts {
            let proto = context.clone().map(wire);
            for key in ["static", "rule", "split"] {
                let lazy = WireContext::new(proto.as_ref());
                let from_wire = evaluate_in(&active, key, &lazy, None, 0);
                let from_json = evaluate_in(&active, key, &context_of(proto.as_ref()), None, 0);
                assert_eq!(from_wire, from_json, "{key} with {context:?}");
                // Only a targeting rule converts the context.
                assert_eq!(lazy.json.get().is_some(), key == "rule", "{key}");
                reasons.insert(from_wire.unwrap().reason.as_str());
            }
        }
        assert_eq!(
            reasons.into_iter().collect::<Vec<_>>(),
            ["DEFAULT", "SPLIT", "STATIC", "TARGETING_MATCH"]
        );
    }
}

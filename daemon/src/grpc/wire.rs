//! Hand-written codecs for hot methods, past the generated types: a [`WireRoute`] sends the
//! methods its [`WireMethods`] name through a [`WireCodec`] (a request read straight into what the
//! handler works with, a reply written straight from what it computed) and every other method to
//! the generated server. `Flags.Evaluate` and flagd's typed `Resolve*` (`flags::wire`),
//! `Secrets.Get` (`secrets::wire`, so the opened value is wiped once its reply is written) and
//! `Policy.Check` (`policy::wire`, its request's strings lent to the decision) are served this way;
//! each codec is tested byte for byte against the generated types.
//!
//! Why: decoding into prost structs, converting them and encoding prost replies (sized field by
//! field before writing) cost a measurable share of a cheap call (docs/PERFORMANCE.md, "Flags").
//! The gain is what the codec lets the handler skip: `Policy.Check` through a codec that still
//! decoded into owned strings measured no difference (−0.3 % of its instructions); lending the
//! strings to the decision is what saved its allocations (docs/PERFORMANCE.md).

use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::error::ServiceError;

/// Why a request could not be read, worded as prost words its own decode errors (the
/// authorization layer's answer to those is the answer here too: [`refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(String);

impl DecodeError {
    pub fn new(why: &str) -> Self {
        DecodeError(format!("failed to decode Protobuf message: {why}"))
    }
}

impl From<prost::DecodeError> for DecodeError {
    fn from(err: prost::DecodeError) -> Self {
        DecodeError(err.to_string())
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request the hand-written codec reads.
pub trait WireRequest: Sized + Send + 'static {
    fn decode(buf: Bytes) -> Result<Self, DecodeError>;
}

/// A reply the hand-written codec writes.
pub trait WireReply: Send + 'static {
    fn encoded_len(&self) -> usize;
    fn encode(&self, buf: &mut impl BufMut);
}

/// The codec of the hand-written routes: `Req` in, `Rep` out. A request that cannot be read is
/// INVALID_ARGUMENT ([`refusal`]).
pub struct WireCodec<Req, Rep>(std::marker::PhantomData<fn() -> (Req, Rep)>);

impl<Req, Rep> Default for WireCodec<Req, Rep> {
    fn default() -> Self {
        WireCodec(std::marker::PhantomData)
    }
}

impl<Req: WireRequest, Rep: WireReply> Codec for WireCodec<Req, Rep> {
    type Encode = Rep;
    type Decode = Req;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        Self::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self::default()
    }
}

impl<Req: WireRequest, Rep: WireReply> Encoder for WireCodec<Req, Rep> {
    type Item = Rep;
    type Error = Status;

    fn encode(&mut self, item: Rep, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }
}

impl<Req: WireRequest, Rep: WireReply> Decoder for WireCodec<Req, Rep> {
    type Item = Req;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Req>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Req::decode(bytes).map(Some).map_err(refusal)
    }
}

/// The answer to a request that could not be read: INVALID_ARGUMENT saying briefly why, as for a
/// request the generated types could not decode (docs/API.md, "Undecodable requests").
pub fn refusal(err: DecodeError) -> Status {
    ServiceError::Undecodable(crate::grpc::status::decode_reason(&err.0)).into()
}

/// The methods of one service that a [`WireRoute`] serves through its [`WireCodec`].
pub trait WireMethods: Clone + Send + Sync + 'static {
    type Request: WireRequest;
    type Reply: WireReply;
    type Method: tonic::server::UnaryService<Self::Request, Response = Self::Reply, Future: Send>
        + Send
        + 'static;

    /// The handler of method `name` (the path's last segment, e.g. `Check`), or `None` when the
    /// generated server serves it.
    fn method(&self, name: &str) -> Option<Self::Method>;
}

/// A service as routed: the methods `M` names through [`WireCodec`], every other method (and any
/// path that is not this service's) through the generated server `S`.
#[derive(Clone)]
pub struct WireRoute<S, M> {
    generated: S,
    methods: M,
    max_message_bytes: usize,
}

impl<S, M> WireRoute<S, M> {
    /// `generated` with its message size limits already set; the hand-written methods get the
    /// same `max_message_bytes` both ways.
    pub fn new(generated: S, methods: M, max_message_bytes: usize) -> Self {
        WireRoute {
            generated,
            methods,
            max_message_bytes,
        }
    }
}

impl<S: tonic::server::NamedService, M> tonic::server::NamedService for WireRoute<S, M> {
    const NAME: &'static str = S::NAME;
}

impl<S, M, B> tower::Service<http::Request<B>> for WireRoute<S, M>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService,
    S::Future: Send + 'static,
    M: WireMethods,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_name::<S>(request.uri().path()).and_then(|m| self.methods.method(m));
        let Some(method) = method else {
            return Box::pin(self.generated.call(request));
        };
        let max = Some(self.max_message_bytes);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WireCodec::<M::Request, M::Reply>::default())
                .apply_max_message_size_config(max, max);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// `Check` of `/brainstem.v1.Policy/Check` when `S` is `brainstem.v1.Policy`.
fn method_name<S: tonic::server::NamedService>(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(S::NAME)?
        .strip_prefix('/')
}

/// Reads a length-delimited field's length and checks that `buf` holds that many bytes.
fn delimited_len(buf: &mut impl Buf) -> Result<usize, DecodeError> {
    let len = decode_varint(buf)?;
    if len > buf.remaining() as u64 {
        return Err(DecodeError::new("buffer underflow"));
    }
    Ok(len as usize)
}

/// Reads a length-delimited field's bytes (its length first), sharing `buf`'s memory.
pub fn length_delimited(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = delimited_len(buf)?;
    Ok(buf.split_to(len))
}

/// [`length_delimited`] over a borrowed slice: the field's bytes, borrowed.
pub fn length_delimited_slice<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = delimited_len(buf)?;
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Ok(field)
}

/// A length-delimited field of `len` bytes with a one-byte key (field numbers below 16).
pub fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Writes string field `tag` (below 16), as prost writes a set string.
pub fn encode_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    encode_bytes(tag, s.as_bytes(), buf);
}

/// Writes length-delimited field `tag` (below 16) holding `bytes`.
pub fn encode_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named;

    impl tonic::server::NamedService for Named {
        const NAME: &'static str = "brainstem.v1.Policy";
    }

    /// Only this service's own paths name a method.
    #[test]
    fn method_names_come_from_the_services_own_paths() {
        assert_eq!(
            method_name::<Named>("/brainstem.v1.Policy/Check"),
            Some("Check")
        );
        assert_eq!(method_name::<Named>("/brainstem.v1.Policy/"), Some(""));
        for path in [
            "brainstem.v1.Policy/Check",
            "/brainstem.v1.Policy",
            "/brainstem.v1.PolicyX/Check",
            "/brainstem.v1.Flags/Check",
            "",
        ] {
            assert_eq!(method_name::<Named>(path), None, "{path}");
        }
    }

    /// A request that cannot be read answers as an undecodable one does on the generated path.
    #[test]
    fn refusals_say_briefly_why() {
        for (err, reason) in [
            (DecodeError::new("buffer underflow"), "not valid protobuf"),
            (
                DecodeError::new("invalid string value: data is not UTF-8 encoded"),
                "UTF-8",
            ),
            (DecodeError::new("key: data is not UTF-8"), "UTF-8"),
            (
                DecodeError::new("recursion limit reached"),
                "nested too deeply",
            ),
        ] {
            let status = refusal(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let message = status.message();
            assert!(
                message.starts_with("the request could not be decoded: "),
                "{message}"
            );
            assert!(message.contains(reason), "{message}");
        }
        let from_prost = DecodeError::from(
            <prost_types::Struct as prost::Message>::decode(&[0x0a, 5][..]).unwrap_err(),
        );
        assert!(refusal(from_prost).message().contains("not valid protobuf"));
    }

    /// A request of one length-delimited field (1) whose bytes are kept.
    struct Echo(Bytes);

    impl WireRequest for Echo {
        fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
            let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
            if (tag, wire_type) != (1, WireType::LengthDelimited) {
                return Err(DecodeError::new("invalid wire type"));
            }
            Ok(Echo(length_delimited(&mut buf)?))
        }
    }

    impl WireReply for Echo {
        fn encoded_len(&self) -> usize {
            field_len(self.0.len())
        }

        fn encode(&self, buf: &mut impl BufMut) {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(self.0.len() as u64, buf);
            buf.put_slice(&self.0);
        }
    }

    #[derive(Clone)]
    struct EchoMethods;

    struct EchoMethod;

    impl tonic::server::UnaryService<Echo> for EchoMethod {
        type Response = Echo;
        type Future = std::future::Ready<Result<tonic::Response<Echo>, Status>>;

        fn call(&mut self, request: tonic::Request<Echo>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(request.into_inner())))
        }
    }

    impl WireMethods for EchoMethods {
        type Request = Echo;
        type Reply = Echo;
        type Method = EchoMethod;

        fn method(&self, name: &str) -> Option<EchoMethod> {
            (name == "Echo").then_some(EchoMethod)
        }
    }

    /// Stands for the generated server: answers every call it gets with a marker header.
    #[derive(Clone)]
    struct Generated;

    impl tonic::server::NamedService for Generated {
        const NAME: &'static str = "brainstem.v1.Policy";
    }

    impl<B: Send + 'static> tower::Service<http::Request<B>> for Generated {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<B>) -> Self::Future {
            let mut response = http::Response::new(tonic::body::Body::empty());
            response
                .headers_mut()
                .insert("x-served-by", http::HeaderValue::from_static("generated"));
            std::future::ready(Ok(response))
        }
    }

    async fn call(path: &str, message: &[u8]) -> http::Response<tonic::body::Body> {
        use tower::Service;

        let mut frame = vec![0];
        frame.extend((message.len() as u32).to_be_bytes());
        frame.extend(message);
        let request = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/grpc")
            .body(http_body_util::Full::new(Bytes::from(frame)))
            .unwrap();
        let mut route = WireRoute::new(Generated, EchoMethods, 1024);
        route.call(request).await.unwrap()
    }

    async fn body_and_status(response: http::Response<tonic::body::Body>) -> (Bytes, String) {
        use http_body_util::BodyExt;

        let headers = response.headers().clone();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .or(headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (collected.to_bytes(), status)
    }

    /// The route's own methods go through the codec, whatever else to the generated server; a
    /// message the codec cannot read is INVALID_ARGUMENT.
    #[tokio::test]
    async fn the_route_sends_its_methods_through_the_codec() {
        let message = [0x0a, 2, b'h', b'i'];
        let response = call("/brainstem.v1.Policy/Echo", &message).await;
        assert!(response.headers().get("x-served-by").is_none());
        let (body, status) = body_and_status(response).await;
        assert_eq!(status, "0");
        assert_eq!(&body[..], &[0, 0, 0, 0, 4, 0x0a, 2, b'h', b'i']);

        for path in [
            "/brainstem.v1.Policy/Other",
            "/brainstem.v1.Flags/Echo",
            "/brainstem.v1.Policy",
        ] {
            let response = call(path, &message).await;
            assert_eq!(
                response.headers().get("x-served-by").map(|v| v.as_bytes()),
                Some(&b"generated"[..]),
                "{path}"
            );
        }

        let response = call("/brainstem.v1.Policy/Echo", &[0x0a, 9, b'h']).await;
        let (_, status) = body_and_status(response).await;
        assert_eq!(status, "3");
    }

    #[test]
    fn a_length_beyond_the_buffer_is_an_error() {
        let mut buf = Bytes::from_static(&[5, b'a', b'b']);
        assert!(length_delimited(&mut buf).is_err());
        let mut buf = Bytes::from_static(&[2, b'a', b'b', 9]);
        assert_eq!(
            length_delimited(&mut buf).unwrap(),
            Bytes::from_static(b"ab")
        );
        assert_eq!(buf, Bytes::from_static(&[9]));

        let mut slice: &[u8] = &[5, b'a', b'b'];
        assert!(length_delimited_slice(&mut slice).is_err());
        let mut slice: &[u8] = &[2, b'a', b'b', 9];
        assert_eq!(length_delimited_slice(&mut slice).unwrap(), b"ab");
        assert_eq!(slice, &[9]);
    }
}

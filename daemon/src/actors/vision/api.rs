//! `brainstem.v1.Vision`: the SubmitFrames client stream ↔ the vision actor.

use brainstem_proto::v1 as pb;
use brainstem_proto::v1::vision_server::Vision as VisionApi;
use tonic::{Request, Response, Status, Streaming};

use crate::actors::episodic::Episodic;
use crate::actors::vision::config::VisionConfig;
use crate::actors::vision::{Format, Frame, Settings, Vision, VisionError};
use crate::error::ServiceError;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};

pub struct VisionService {
    vision: Vision,
}

impl VisionService {
    pub fn new(vision: Vision) -> Self {
        VisionService { vision }
    }
}

fn status(err: VisionError) -> Status {
    ServiceError::from(err).into()
}

/// The domain frame of a message; an unknown format is INVALID_ARGUMENT on `format`.
pub fn frame(message: pb::Frame) -> Result<Frame, VisionError> {
    let Some(format) = Format::parse(&message.format) else {
        return Err(VisionError::invalid(
            "format",
            format!(
                "{:?} is not one of {}",
                crate::error::truncate_for_reply(&message.format),
                Format::NAMES
            ),
        ));
    };
    Ok(Frame {
        source: message.source,
        width: message.width,
        height: message.height,
        format,
        data: message.data,
    })
}

#[tonic::async_trait]
impl VisionApi for VisionService {
    #[tracing::instrument(skip_all)]
    async fn submit_frames(
        &self,
        request: Request<Streaming<pb::Frame>>,
    ) -> Result<Response<pb::SubmitFramesResponse>, Status> {
        let mut stream = request.into_inner();
        let mut reply = pb::SubmitFramesResponse::default();
        while let Some(message) = stream.message().await? {
            let frame = frame(message).map_err(status)?;
            let outcome = self.vision.submit(frame).await.map_err(status)?;
            reply.received += 1;
            if outcome.duplicate {
                reply.duplicates += 1;
            }
            if outcome.motion.is_some() {
                reply.motion_events += 1;
            }
        }
        Ok(Response::new(reply))
    }
}

/// The settings for `config`, with the episodic buffer's embedding dimension when it is enabled.
fn settings(config: &VisionConfig, episodic: Option<&Episodic>) -> Settings {
    Settings::from_config(config, episodic.map_or(0, |e| e.settings().dim))
}

/// The Vision service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Vision",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Actor,
        methods: &[(
            "/brainstem.v1.Vision/SubmitFrames",
            Requirement::Capability("vision.submit"),
        )],
    },
    describe: crate::actors::vision::events::describe,
    setup: |setup| {
        let config = &setup.config.vision;
        if !config.enabled {
            return Ok(None);
        }
        let episodic = setup.parts.get::<Episodic>();
        if episodic.is_none() {
            tracing::warn!(
                "the episodic buffer is disabled: vision counts motion but writes no episodes"
            );
        }
        let vision = Vision::register(
            setup.actors,
            settings(config, episodic.as_ref()),
            config.actor.clone(),
            episodic,
        )
        .map_err(|err| crate::daemon::StartError::Setup {
            service: "brainstem.v1.Vision",
            source: Box::new(err),
        })?;
        Ok(Some(crate::grpc::services::handler(
            move |_, routes, limits| {
                crate::route!(
                    routes,
                    limits,
                    brainstem_proto::v1::vision_server::VisionServer::new(VisionService::new(
                        vision
                    ))
                )
            },
        )))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_format_is_refused_naming_the_field() {
        for name in ["bmp", "GRAY8", ""] {
            let err = frame(pb::Frame {
                source: "cam".into(),
                width: 1,
                height: 1,
                format: name.into(),
                data: vec![0],
            })
            .unwrap_err();
            let VisionError::Invalid(v) = err else {
                panic!("{err:?}")
            };
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].field, "format");
        }
        for name in ["gray8", "rgb8", "png", "jpeg"] {
            let ok = frame(pb::Frame {
                format: name.into(),
                ..pb::Frame::default()
            });
            assert!(ok.is_ok(), "{name}");
        }
    }
}

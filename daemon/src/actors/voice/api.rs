//! `brainstem.v1.Voice`: the SubmitAudio client stream ↔ the voice actor.

use brainstem_proto::v1 as pb;
use brainstem_proto::v1::voice_server::Voice as VoiceApi;
use tonic::{Request, Response, Status, Streaming};

use crate::actors::episodic::Episodic;
use crate::actors::voice::{AudioStream, Chunk, Settings, Voice, VoiceError};
use crate::error::ServiceError;
use crate::grpc::methods::Requirement;
use crate::grpc::services::{Health, Registration, ServiceSpec};

pub struct VoiceService {
    voice: Voice,
}

impl VoiceService {
    pub fn new(voice: Voice) -> Self {
        VoiceService { voice }
    }
}

fn status(err: VoiceError) -> Status {
    ServiceError::from(err).into()
}

#[tonic::async_trait]
impl VoiceApi for VoiceService {
    #[tracing::instrument(skip_all)]
    async fn submit_audio(
        &self,
        request: Request<Streaming<pb::AudioChunk>>,
    ) -> Result<Response<pb::SubmitAudioResponse>, Status> {
        let mut messages = request.into_inner();
        let mut stream = AudioStream::default();
        while let Some(message) = messages.message().await? {
            let chunk = Chunk {
                source: message.source,
                sample_rate: message.sample_rate,
                pcm: message.pcm,
            };
            self.voice.chunk(&mut stream, chunk).await.map_err(status)?;
        }
        self.voice.finish(&mut stream).await.map_err(status)?;
        Ok(Response::new(pb::SubmitAudioResponse {
            audio_ms: stream.audio_ms(),
            segments: stream
                .segments
                .iter()
                .map(|s| pb::Segment {
                    start_ms: s.start_ms,
                    end_ms: s.end_ms,
                    peak_dbfs: s.peak_dbfs,
                    mean_dbfs: s.mean_dbfs,
                })
                .collect(),
        }))
    }
}

/// The Voice service's registration (see [`crate::grpc::services`]).
pub const REGISTRATION: Registration = Registration {
    spec: ServiceSpec {
        name: "brainstem.v1.Voice",
        descriptors: brainstem_proto::v1::FILE_DESCRIPTOR_SET,
        health: Health::Actor,
        methods: &[(
            "/brainstem.v1.Voice/SubmitAudio",
            Requirement::Capability("voice.submit"),
        )],
    },
    describe: crate::actors::voice::events::describe,
    setup: |setup| {
        let config = &setup.config.voice;
        if !config.enabled {
            return Ok(None);
        }
        let episodic = setup.parts.get::<Episodic>();
        if episodic.is_none() {
            tracing::warn!(
                "the episodic buffer is disabled: voice finds utterances but writes no episodes"
            );
        }
        let dim = episodic.as_ref().map_or(0, |e| e.settings().dim);
        let voice = Voice::register(
            setup.actors,
            Settings::from_config(config, dim),
            config.actor.clone(),
            episodic,
        )
        .map_err(|err| crate::daemon::StartError::Setup {
            service: "brainstem.v1.Voice",
            source: Box::new(err),
        })?;
        Ok(Some(crate::grpc::services::handler(
            move |_, routes, limits| {
                crate::route!(
                    routes,
                    limits,
                    brainstem_proto::v1::voice_server::VoiceServer::new(VoiceService::new(voice))
                )
            },
        )))
    },
};

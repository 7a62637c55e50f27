//! A bare tonic + rustls server answering `brainstem.v1.Admin/Ping` with mutual TLS and nothing else:
//! no identity extraction, no authorization layer, no metrics. It is the reference brainstemd's Ping is
//! compared against in docs/PERFORMANCE.md, using the same dev PKI and the same bench harness:
//!
//! ```sh
//! cargo run --release --example bare_ping_server -- .brainstem-dev 127.0.0.1:50061
//! brainstemctl bench --endpoint 127.0.0.1:50061 --scenario ping --connections 1 --concurrency 64
//! ```

use brainstem_client::v1::admin_server::{Admin, AdminServer};
use brainstem_client::v1::{
    GetLogLevelRequest, GetStatusReply, GetStatusRequest, LogLevelReply, PingReply, PingRequest,
    SetLogLevelRequest, WhoAmIReply, WhoAmIRequest,
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

struct Bare;

#[tonic::async_trait]
impl Admin for Bare {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {
            payload: request.into_inner().payload,
        }))
    }
    async fn who_am_i(&self, _: Request<WhoAmIRequest>) -> Result<Response<WhoAmIReply>, Status> {
        Err(Status::unimplemented("bare reference server: Ping only"))
    }
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusReply>, Status> {
        Err(Status::unimplemented("bare reference server: Ping only"))
    }
    async fn get_log_level(
        &self,
        _: Request<GetLogLevelRequest>,
    ) -> Result<Response<LogLevelReply>, Status> {
        Err(Status::unimplemented("bare reference server: Ping only"))
    }
    async fn set_log_level(
        &self,
        _: Request<SetLogLevelRequest>,
    ) -> Result<Response<LogLevelReply>, Status> {
        Err(Status::unimplemented("bare reference server: Ping only"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let state_dir =
        std::path::PathBuf::from(args.next().unwrap_or_else(|| ".brainstem-dev".into()));
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:50061".into())
        .parse()?;
    let pki = state_dir.join("pki");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(pki.join("server.pem"))?,
            std::fs::read(pki.join("server.key"))?,
        ))
        .client_ca_root(Certificate::from_pem(std::fs::read(pki.join("ca.pem"))?));
    eprintln!("bare Ping server on {addr}");
    Server::builder()
        .tls_config(tls)?
        .add_service(AdminServer::new(Bare))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

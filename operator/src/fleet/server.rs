//! The telemetry server: one gRPC stream per agent. The first message must be a Hello naming the node, and the
//! caller's token must prove that node; after that every sample goes into the fleet book and is acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use haiyun_api::agent as pb;
use haiyun_api::agent::agent_message::Body;
use haiyun_api::agent::telemetry_server::{Telemetry, TelemetryServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Fleet;
use super::auth::{AuthError, Authenticator};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("failed to listen on {addr}: {source} (choose another with --telemetry-addr)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The service.
#[derive(Debug, Clone)]
pub struct Service {
    fleet: Arc<Fleet>,
    auth: Arc<Authenticator>,
}

impl Service {
    /// A service writing into `fleet`, admitting agents `auth` accepts.
    pub fn new(fleet: Arc<Fleet>, auth: Authenticator) -> Self {
        Service { fleet, auth: Arc::new(auth) }
    }

    /// The tonic service.
    pub fn into_server(self) -> TelemetryServer<Self> {
        TelemetryServer::new(self)
    }
}

fn refused(e: AuthError) -> Status {
    match e {
        AuthError::Review(_) | AuthError::NoCluster(_) => Status::unavailable(e.to_string()),
        AuthError::Missing | AuthError::Invalid(_) => Status::unauthenticated(e.to_string()),
        _ => Status::permission_denied(e.to_string()),
    }
}

#[tonic::async_trait]
impl Telemetry for Service {
    type StreamStream = ReceiverStream<Result<pb::OperatorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s"))??;
        let Some(pb::AgentMessage { body: Some(Body::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message must be a Hello naming the node"));
        };
        if hello.node.is_empty() {
            return Err(Status::invalid_argument(
                "Hello.node is empty: start the agent with --node or $NODE_NAME",
            ));
        }
        if let Err(e) = self.auth.check(token.as_deref(), &hello.node).await {
            tracing::warn!(node = %hello.node, error = %e, "refused an agent");
            return Err(refused(e));
        }
        let fleet = self.fleet.clone();
        let node = hello.node.clone();
        let id = fleet.hello(&node, &hello, crate::time::now_ms());
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(pb::AgentMessage { body: Some(Body::Sample(s)) })) => {
                        if let Some(seq) = fleet.sample(&node, id, &s) {
                            // Acknowledgements are cumulative: when the channel is full a later one covers this.
                            let _ = tx.try_send(Ok(pb::OperatorMessage { acked_seq: seq }));
                        }
                    }
                    Ok(Some(pb::AgentMessage { body: Some(Body::Inventory(inv)) })) => {
                        fleet.inventory(&node, id, &inv)
                    }
                    Ok(Some(_)) => {
                        let _ = tx.try_send(Err(Status::invalid_argument("only one Hello per stream")));
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            fleet.disconnected(&node, id);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves `service` on `addr` until the process ends; returns the bound address once listening.
pub async fn serve(addr: SocketAddr, service: Service) -> Result<SocketAddr, ServerError> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service.into_server())
            .serve_with_incoming(incoming);
        if let Err(e) = server.await {
            tracing::error!(error = %e, "telemetry server stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::GpuState;
    use haiyun_api::agent::telemetry_client::TelemetryClient;
    use std::collections::HashMap;
    use tonic::transport::{Channel, Endpoint};

    /// A client and server joined by an in-memory pipe.
    async fn in_memory(fleet: Arc<Fleet>) -> TelemetryClient<Channel> {
        let tokens = HashMap::from([("node-a".to_string(), "tok-a".to_string())]);
        let service = Service::new(fleet, Authenticator::Tokens(tokens));
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server_io)))
                .await
        });
        let mut client_io = Some(client_io);
        let channel = Endpoint::from_static("http://in-memory")
            .connect_with_connector(tower::service_fn(move |_| {
                let io = client_io.take();
                async move {
                    io.map(hyper_util::rt::TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("the pipe is already taken"))
                }
            }))
            .await
            .unwrap();
        TelemetryClient::new(channel)
    }

    fn hello(node: &str) -> pb::AgentMessage {
        pb::AgentMessage {
            body: Some(Body::Hello(pb::Hello { node: node.into(), boot: 1, ..Default::default() })),
        }
    }

    fn sample(seq: u64, xid_gpu: Option<u32>) -> pb::AgentMessage {
        let gpus = (0..8)
            .map(|i| {
                let mut r = pb::Reading { index: i, utilization_gpu_pct: Some(50), ..Default::default() };
                if Some(i) == xid_gpu {
                    r.set_health(pb::HealthState::Unhealthy);
                    r.health_reason = "XID 79".into();
                } else {
                    r.set_health(pb::HealthState::Healthy);
                }
                r
            })
            .collect();
        pb::AgentMessage {
            body: Some(Body::Sample(pb::Sample {
                seq,
                taken_unix_ms: crate::time::now_ms(),
                gpus,
                xids: vec![],
            })),
        }
    }

    fn request(
        msgs: Vec<pb::AgentMessage>,
        token: &str,
    ) -> Request<impl tokio_stream::Stream<Item = pb::AgentMessage> + Send + 'static> {
        let mut r = Request::new(tokio_stream::iter(msgs));
        r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    #[tokio::test]
    async fn samples_over_an_in_memory_stream_reach_the_book_and_are_acknowledged() {
        let fleet = Arc::new(Fleet::new(Duration::from_secs(60), Arc::new(tokio::sync::Notify::new())));
        let mut client = in_memory(fleet.clone()).await;
        let inv = pb::AgentMessage {
            body: Some(Body::Inventory(pb::Inventory {
                gpus: vec![pb::Gpu { index: 3, uuid: "GPU-3".into(), ..Default::default() }],
            })),
        };
        let msgs = vec![hello("node-a"), inv, sample(1, None), sample(2, Some(3)), sample(3, Some(3))];
        let mut acks = client.stream(request(msgs, "tok-a")).await.unwrap().into_inner();
        let mut last = 0;
        while let Some(m) = acks.message().await.unwrap() {
            last = m.acked_seq;
            if last == 3 {
                break;
            }
        }
        assert_eq!(last, 3);
        let v = &fleet.view()["node-a"];
        assert_eq!(v.gpus[&3].state, GpuState::Unhealthy);
        assert_eq!((v.gpus[&3].reason.as_str(), v.gpus[&3].uuid.as_str()), ("XID 79", "GPU-3"));
        assert_eq!(v.gpus[&0].state, GpuState::Healthy);
        assert_eq!(v.lost, 0);
    }

    #[tokio::test]
    async fn a_token_for_one_node_cannot_speak_for_another_and_a_stream_must_start_with_hello() {
        let fleet = Arc::new(Fleet::new(Duration::from_secs(60), Arc::new(tokio::sync::Notify::new())));
        let mut client = in_memory(fleet.clone()).await;
        let e = client.stream(request(vec![hello("node-b"), sample(1, Some(0))], "tok-a")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("node-a") && e.message().contains("node-b"), "{}", e.message());
        let e = client.stream(request(vec![hello("node-a")], "forged")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = client.stream(request(vec![sample(1, None)], "tok-a")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(fleet.view().is_empty(), "nothing was recorded for a refused stream");
    }
}

//! Baseline B1: a bare tonic service over the vault's own TLS configuration (the same
//! `server_config`, certificates and client), answering with as many bytes as a real
//! `GetFields` response. What the vault adds on top of it is the price of authorization,
//! keys, decryption and the durable audit event of every read.

use std::sync::Arc;

use pii_vault::client::{connect, ClientCerts};
use pii_vault::config::TlsPaths;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::drive::{outcome, Outcome, Target};

pub mod pb {
    tonic::include_proto!("piivault.bench.v1");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};

struct Service;

#[tonic::async_trait]
impl Echo for Service {
    async fn echo(
        &self, request: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoReply>, Status> {
        let bytes = request.into_inner().reply_bytes as usize;
        Ok(Response::new(pb::EchoReply {
            payload: vec![b'x'; bytes],
        }))
    }
}

/// The echo server, on a free loopback port.
pub struct EchoBaseline {
    pub addr: String,
    certs: ClientCerts,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl EchoBaseline {
    /// Serves with the vault's TLS files; clients connect with `certs`, as to the vault.
    pub async fn start(tls: &TlsPaths, certs: &ClientCerts) -> Self {
        let config = pii_vault::server::server_config(tls).expect("the vault's TLS configuration");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        // Handshakes in their own tasks, as the vault's accept loop does.
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    () = tx.closed() => return,
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                });
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EchoServer::new(Service))
                .serve_with_incoming_shutdown(ReceiverStream::new(rx), async move {
                    let _ = stopped.await;
                }),
        );
        Self {
            addr,
            certs: certs.clone(),
            stop,
            task,
        }
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.addr, &self.certs)
            .await
            .expect("connect to the echo baseline")
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("echo server task")
            .expect("echo server");
    }
}

/// Echo requests as large as `request_bytes`, asking for replies of `reply_bytes`
/// (both encoded sizes, as on the wire).
#[derive(Clone)]
pub struct EchoTarget {
    client: EchoClient<Channel>,
    request: pb::EchoRequest,
}

impl EchoTarget {
    pub fn new(channel: Channel, request_bytes: usize, reply_bytes: usize) -> Self {
        let payload = padded(reply_bytes, |n| pb::EchoReply {
            payload: vec![0; n],
        })
        .payload
        .len() as u32;
        let request = padded(request_bytes, |n| pb::EchoRequest {
            reply_bytes: payload,
            padding: vec![0; n],
        });
        Self {
            client: EchoClient::new(channel),
            request,
        }
    }
}

/// The message `make(n)` for the largest `n` whose encoding is at most `bytes` long.
fn padded<M: Message>(bytes: usize, make: impl Fn(usize) -> M) -> M {
    let mut n = bytes;
    loop {
        let message = make(n);
        if message.encoded_len() <= bytes || n == 0 {
            return message;
        }
        n -= 1;
    }
}

impl Target for EchoTarget {
    async fn call(&mut self, _n: u64) -> Outcome {
        outcome(self.client.echo(self.request.clone()).await)
    }
}

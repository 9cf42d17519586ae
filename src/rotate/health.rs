//! The optional health check a replacement must pass after its EC2 status checks: a TCP
//! connection to `--health-port`, or an HTTP GET of `--health-url` answered with 2xx.

use anyhow::{bail, Result};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which of an instance's addresses the health check connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// The private IPv4 address (from inside the VPC, a bastion or a VPN).
    Private,
    /// The public IPv4 address.
    Public,
}

impl std::str::FromStr for AddressKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "private" => Ok(AddressKind::Private),
            "public" => Ok(AddressKind::Public),
            _ => Err(format!("`{s}`: use private or public")),
        }
    }
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connection to the port succeeds.
    Tcp {
        /// Port.
        port: u16,
    },
    /// `GET path` on the port answers 2xx.
    Http {
        /// Port.
        port: u16,
        /// Path, starting with `/`.
        path: String,
    },
}

impl HealthCheck {
    /// The check `--health-port` and `--health-url` ask for, if any.
    pub fn from_args(port: Option<u16>, url: Option<&str>) -> Result<Option<HealthCheck>> {
        match (port, url) {
            (None, None) => Ok(None),
            (Some(port), None) => Ok(Some(HealthCheck::Tcp { port })),
            (port, Some(path)) => {
                if !path.starts_with('/') {
                    bail!(
                        "--health-url takes a path on the instance, such as `/healthz`, \
                         not `{path}`"
                    );
                }
                Ok(Some(HealthCheck::Http {
                    port: port.unwrap_or(80),
                    path: path.to_string(),
                }))
            }
        }
    }

    /// Probes `ip` once, giving up after `timeout`; `Err` says why it is not healthy.
    pub async fn probe(&self, ip: IpAddr, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.probe_inner(ip)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    async fn probe_inner(&self, ip: IpAddr) -> Result<(), String> {
        let port = match self {
            HealthCheck::Tcp { port } | HealthCheck::Http { port, .. } => *port,
        };
        let addr = SocketAddr::new(ip, port);
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let HealthCheck::Http { path, .. } = self else {
            return Ok(());
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send to {addr}: {e}"))?;
        let mut head = [0u8; 64];
        let n = stream
            .read(&mut head)
            .await
            .map_err(|e| format!("no answer from {addr}: {e}"))?;
        let status_line = String::from_utf8_lossy(&head[..n]);
        let code = status_line.split_whitespace().nth(1).unwrap_or("");
        if code.starts_with('2') && code.len() == 3 {
            Ok(())
        } else {
            let first = status_line.lines().next().unwrap_or("").trim();
            Err(format!("GET http://{addr}{path} answered `{first}`"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn flags_make_the_check() {
        assert_eq!(HealthCheck::from_args(None, None).unwrap(), None);
        assert_eq!(
            HealthCheck::from_args(Some(8080), None).unwrap(),
            Some(HealthCheck::Tcp { port: 8080 })
        );
        assert_eq!(
            HealthCheck::from_args(None, Some("/healthz")).unwrap(),
            Some(HealthCheck::Http {
                port: 80,
                path: "/healthz".into()
            })
        );
        assert!(HealthCheck::from_args(None, Some("healthz")).is_err());
    }

    async fn serve_once(answer: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer.as_bytes()).await;
        });
        port
    }

    #[tokio::test]
    async fn http_check_needs_a_2xx() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t = Duration::from_secs(5);
        let port = serve_once("HTTP/1.1 200 OK\r\n\r\nok").await;
        let ok = HealthCheck::Http {
            port,
            path: "/healthz".into(),
        };
        assert_eq!(ok.probe(ip, t).await, Ok(()));
        let port = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let bad = HealthCheck::Http {
            port,
            path: "/healthz".into(),
        };
        let err = bad.probe(ip, t).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn tcp_check_fails_when_nothing_listens() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let check = HealthCheck::Tcp { port };
        let err = check
            .probe("127.0.0.1".parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}

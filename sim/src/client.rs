//! The load generator's HTTP/1.1 client: one connection per request in flight, each kept for
//! the whole run once opened.
//!
//! A general-purpose pool (reqwest's) races a new connection against the return of an idle
//! one whenever none is free, keeps the winner and closes idle connections above its limit.
//! Under an open-loop load past the server's capacity, that opened and closed connections
//! continuously: every closed one holds a local port in TIME_WAIT, and the kernel's search for
//! a free port took half of the generator's CPU on a machine it shares with the server. Here a
//! request takes an idle connection or opens one, and gives it back when its answer is read,
//! so the connections never outnumber the requests the load has had in flight at once.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

type Connection = SendRequest<Full<Bytes>>;

/// A server's answer, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

pub struct Client {
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
    host: HeaderValue,
    /// A path the target's URL starts with, put before every request's path.
    prefix: String,
    idle: Mutex<Vec<Connection>>,
    /// Bounds one exchange, connecting included.
    timeout: Duration,
}

impl Client {
    /// A client for `base_url` (`http://host:port`, optionally with a path prefix).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Client, String> {
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{base_url}`: the load generator speaks plain http://"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("`{base_url}` names no host"));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Client {
            host: HeaderValue::from_str(&authority).map_err(|e| format!("`{base_url}`: {e}"))?,
            authority,
            prefix: prefix.to_string(),
            idle: Mutex::new(Vec::new()),
            timeout,
        })
    }

    /// Connections open and not in use.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn connect(&self) -> Result<Connection, String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true); // Best effort: only latency depends on it.
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one request and reads its answer whole. `headers` are added to `Host`; an empty
    /// `body` is none.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let build = || {
            let mut request = Request::builder()
                .method(method.clone())
                .uri(format!("{}{path}", self.prefix))
                .header(header::HOST, self.host.clone());
            for (name, value) in headers {
                request = request.header(name, *value);
            }
            request
                .body(Full::new(body.clone()))
                .map_err(|e| format!("building the request: {e}"))
        };
        let exchange = async {
            // An idle connection the server has closed since fails before the request
            // leaves: send it again on a new connection, once.
            let reused = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
            };
            if let Some(connection) = reused {
                match self.exchange(connection, build()?).await {
                    Err(Failure::NotSent) => {}
                    done => return done.map_err(Failure::message),
                }
            }
            let connection = self.connect().await?;
            self.exchange(connection, build()?)
                .await
                .map_err(Failure::message)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer in {:?}", self.timeout))?
    }

    async fn exchange(
        &self,
        mut connection: Connection,
        request: Request<Full<Bytes>>,
    ) -> Result<Reply, Failure> {
        // Not ready: the connection is gone and the request still here.
        connection.ready().await.map_err(|_| Failure::NotSent)?;
        let response = connection.send_request(request).await.map_err(|e| {
            if e.is_canceled() {
                Failure::NotSent
            } else {
                Failure::Other(format!("http: {e}"))
            }
        })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Failure::Other(format!("reading the answer: {e}")))?
            .to_bytes();
        if !connection.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(connection);
        }
        Ok(Reply {
            status: parts.status,
            body,
        })
    }
}

enum Failure {
    /// The request never left (the connection was closed): another connection may send it.
    NotSent,
    Other(String),
}

impl Failure {
    fn message(self) -> String {
        match self {
            Failure::NotSent => "connection closed before the request left".into(),
            Failure::Other(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_an_address_a_host_and_a_prefix() {
        let c = Client::new("http://127.0.0.1:8080", Duration::from_secs(1)).unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("127.0.0.1:8080", "")
        );
        let c = Client::new("http://localhost/rialto/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("localhost:80", "/rialto")
        );
        assert_eq!(c.host, "localhost:80");
        assert!(Client::new("https://example.com", Duration::from_secs(1)).is_err());
        assert!(Client::new("http:///x", Duration::from_secs(1)).is_err());
    }
}

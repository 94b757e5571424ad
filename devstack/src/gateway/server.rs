//! The HTTP side: hyper HTTP/1.1, CORS as PostgREST answers it (wai-cors
//! with its policy), a bounded request body, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::app::{handle, AppState, Resp};
use super::config::Config;
use super::error::ApiError;
use super::listener;
use super::request::RawRequest;

/// How long in-flight requests may take to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const EXPOSED_HEADERS: &str =
    "Content-Encoding, Content-Location, Content-Range, Content-Type, Date, Location, Server, Transfer-Encoding, Range-Unit";

/// Serves `listener` until `shutdown` completes; then stops accepting,
/// lets in-flight requests finish (up to 5 s) and returns.
pub async fn serve_with_shutdown<F>(config: Config, listener: TcpListener, shutdown: F) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let state = Arc::new(AppState::new(config)?);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Try once before serving, so the first requests find a cache; if the
    // database is not up yet, keep trying in the background (503 meanwhile).
    if state.reload_schema_cache().await.is_err() {
        tokio::spawn(listener::initial_load(state.clone(), stop_rx.clone()));
    }
    if state.config.db_channel_enabled {
        tokio::spawn(listener::listen(state.clone(), stop_rx.clone()));
    }

    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little.
                        eprintln!("gateway: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let mut stop = stop_rx.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(serve_http(&state, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(LenientRequestLine::new(stream)), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
                // Reap finished connections so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        }
    }
    let _ = stop_tx.send(true);
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        connections.abort_all();
    }
    state.pool.close();
    Ok(())
}

/// A gateway running in the background of the current tokio runtime.
pub struct GatewayHandle {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl GatewayHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, drains in-flight requests, and waits for the end.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.map_err(|e| anyhow::anyhow!("gateway task failed: {e}"))?
    }
}

/// Starts the gateway on `listener` in the current tokio runtime.
pub fn spawn(config: Config, listener: TcpListener) -> anyhow::Result<GatewayHandle> {
    let local_addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_with_shutdown(config, listener, async move {
        let _ = rx.await;
    }));
    Ok(GatewayHandle { local_addr, stop: Some(tx), task })
}

/// Percent-encodes, in the first request line of a connection, the bytes
/// hyper's URI parser refuses but PostgREST (warp) accepts: `curl
/// "localhost:3000/t?select=data->>k"` sends a raw `>`. Decoding later
/// restores them, so nothing else changes. Later requests on a kept-alive
/// connection are passed through unchanged (browsers and supabase-js encode
/// these characters themselves).
pub struct LenientRequestLine<T> {
    inner: T,
    /// Still inside the first request line; `spaces` seen so far.
    in_first_line: bool,
    spaces: u8,
    pending: Vec<u8>,
}

impl<T> LenientRequestLine<T> {
    pub fn new(inner: T) -> Self {
        LenientRequestLine { inner, in_first_line: true, spaces: 0, pending: Vec::new() }
    }

    fn needs_escape(b: u8) -> bool {
        matches!(b, b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}') || b >= 0x80
    }

    /// Rewrites `chunk`; returns what to hand to hyper.
    fn transform(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        for (i, &b) in chunk.iter().enumerate() {
            if !self.in_first_line {
                out.extend_from_slice(&chunk[i..]);
                break;
            }
            match b {
                b'\n' => {
                    self.in_first_line = false;
                    out.push(b);
                }
                b' ' => {
                    self.spaces = self.spaces.saturating_add(1);
                    out.push(b);
                }
                _ if self.spaces == 1 && Self::needs_escape(b) => {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
                _ => out.push(b),
            }
        }
        out
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LenientRequestLine<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            if !this.in_first_line {
                return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut raw = vec![0u8; buf.remaining().max(1)];
            let mut raw_buf = tokio::io::ReadBuf::new(&mut raw);
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut raw_buf) {
                std::task::Poll::Ready(Ok(())) => {
                    let filled = raw_buf.filled().to_vec();
                    if filled.is_empty() {
                        return std::task::Poll::Ready(Ok(()));
                    }
                    this.pending = this.transform(&filled);
                }
                other => return other,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.drain(..n);
        std::task::Poll::Ready(Ok(()))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LenientRequestLine<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn header_value(v: &hyper::header::HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

async fn serve_http(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), header_value(v))).collect();
    let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let origin = find("origin");

    // A CORS preflight is answered before anything else (wai-cors).
    if method == "OPTIONS" && origin.is_some() {
        if let Some(_requested_method) = find("access-control-request-method") {
            return preflight(find("access-control-request-headers").as_deref());
        }
    }

    let limit = state.config.max_body_bytes;
    let declared = find("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let resp = if declared.map(|n| n > limit as u64).unwrap_or(false) {
        Resp::from_error(ApiError::body_too_large(limit))
    } else {
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => {
                let body = collected.to_bytes();
                let raw = RawRequest { method: &method, path: &path, query: &query, headers: &headers, body: &body };
                handle(state, &raw).await
            }
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    Resp::from_error(ApiError::body_too_large(limit))
                } else {
                    Resp::from_error(ApiError::invalid_body(format!("Could not read the request body: {e}")))
                }
            }
        }
    };
    to_hyper(resp, origin.is_some())
}

fn preflight(requested_headers: Option<&str>) -> Response<Full<Bytes>> {
    let mut allowed: Vec<String> = vec!["Authorization".into()];
    let requested = requested_headers.unwrap_or("").split(',').map(str::trim).filter(|h| !h.is_empty());
    for h in requested.chain(["Accept", "Accept-Language", "Content-Language"]) {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(h)) {
            allowed.push(h.to_string());
        }
    }
    let resp = Resp {
        status: 200,
        status_text: None,
        headers: vec![
            ("Access-Control-Allow-Origin".into(), "*".into()),
            ("Access-Control-Allow-Methods".into(), "GET, POST, PATCH, PUT, DELETE, OPTIONS, HEAD".into()),
            ("Access-Control-Allow-Headers".into(), allowed.join(", ")),
            ("Access-Control-Max-Age".into(), "86400".into()),
        ],
        body: Bytes::new(),
    };
    to_hyper(resp, false)
}

fn to_hyper(resp: Resp, cors: bool) -> Response<Full<Bytes>> {
    let mut headers = resp.headers;
    if cors {
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("Access-Control-Allow-Origin")) {
            headers.push(("Access-Control-Allow-Origin".into(), "*".into()));
        }
        headers.push(("Access-Control-Expose-Headers".into(), EXPOSED_HEADERS.into()));
    }
    let mut builder = Response::builder().status(resp.status);
    for (k, v) in &headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body = if resp.status == 204 || resp.status == 304 { Bytes::new() } else { resp.body };
    let mut response = match builder.body(Full::new(body)) {
        Ok(r) => r,
        Err(_) => {
            // A header the SQL set that HTTP cannot carry: answer 500.
            let e = ApiError::guc_headers();
            let mut r = Response::new(Full::new(Bytes::from(e.body.to_string())));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
            );
            return r;
        }
    };
    if let Some(text) = resp.status_text {
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(text.into_bytes()) {
            response.extensions_mut().insert(phrase);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_the_first_request_target() {
        let mut l = LenientRequestLine::new(());
        let out = l.transform(b"GET /t?select=data->>k&a=eq.\"x\" HTTP/1.1\r\nX: a>b\r\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /t?select=data-%3E%3Ek&a=eq.%22x%22 HTTP/1.1\r\nX: a>b\r\n"
        );
        assert_eq!(l.transform(b"GET /x?a=> HTTP/1.1"), b"GET /x?a=> HTTP/1.1".to_vec());
    }
}

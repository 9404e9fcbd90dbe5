//! A fake subscriber on loopback: records every request and answers as scripted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, Request, Response, Server};

/// How the subscriber answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// Answer at once with this HTTP status.
    Status(u16),
    /// Wait this long (longer than hookline's timeout: a timeout), then answer 200.
    Hang(Duration),
}

/// One request the subscriber received.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// When it arrived.
    pub at: Instant,
    /// Its headers, names lower-case.
    pub headers: HashMap<String, String>,
    /// Its body.
    pub body: Vec<u8>,
}

impl ReceivedRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Debug)]
struct Script {
    next: VecDeque<Reply>,
    default: Reply,
}

#[derive(Debug)]
struct Inner {
    requests: Mutex<Vec<ReceivedRequest>>,
    script: Mutex<Script>,
}

/// A running fake subscriber; stops when dropped.
pub struct FakeSubscriber {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    inner: Arc<Inner>,
    handle: tokio::task::JoinHandle<()>,
}

impl FakeSubscriber {
    /// Starts a subscriber that answers `default` to every request not otherwise scripted.
    pub async fn start(default: Reply) -> Self {
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(Script {
                next: VecDeque::new(),
                default,
            }),
        });
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind the fake subscriber");
        let addr = acceptor
            .local_addr()
            .into_iter()
            .find_map(|addr| addr.as_socket_addr().copied())
            .expect("an address");
        let shared = inner.clone();
        let app = poem::endpoint::make(move |req: Request| {
            let inner = shared.clone();
            async move { answer(inner, req).await }
        })
        .boxed();
        let handle = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            inner,
            handle,
        }
    }

    /// The next `n` requests fail with 500.
    pub fn fail_times(&self, n: usize) {
        let mut script = self.inner.script.lock().expect("lock");
        script
            .next
            .extend(std::iter::repeat_n(Reply::Status(500), n));
    }

    /// From now on, answer `reply` (after any scripted replies).
    pub fn set_default(&self, reply: Reply) {
        self.inner.script.lock().expect("lock").default = reply;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.inner.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeSubscriber {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn answer(inner: Arc<Inner>, req: Request) -> Response {
    let at = Instant::now();
    let headers = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = req.into_body().into_vec().await.unwrap_or_default();
    inner
        .requests
        .lock()
        .expect("lock")
        .push(ReceivedRequest { at, headers, body });
    let reply = {
        let mut script = inner.script.lock().expect("lock");
        script.next.pop_front().unwrap_or(script.default)
    };
    let status = match reply {
        Reply::Status(status) => status,
        Reply::Hang(duration) => {
            tokio::time::sleep(duration).await;
            200
        }
    };
    Response::builder()
        .status(poem::http::StatusCode::from_u16(status).expect("a status"))
        .body(format!("fake subscriber answered {status}"))
}

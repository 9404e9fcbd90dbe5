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
    flapping: Option<Flapping>,
}

/// A subscriber that flaps: answers cycle through `replies`, but one message (`webhook-id`)
/// fails at most `max_failures` times in a row, so that every message gets through eventually.
#[derive(Debug)]
struct Flapping {
    replies: Vec<Reply>,
    max_failures: usize,
    position: usize,
    failures: HashMap<String, usize>,
}

impl Flapping {
    fn next(&mut self, message_id: &str) -> Reply {
        let failures = self.failures.entry(message_id.to_owned()).or_default();
        if *failures >= self.max_failures || self.replies.is_empty() {
            *failures = 0;
            return Reply::Status(200);
        }
        let reply = self.replies[self.position % self.replies.len()];
        self.position += 1;
        if is_success(reply) {
            *failures = 0;
        } else {
            *failures += 1;
        }
        reply
    }
}

/// Whether hookline sees `reply` as a success (a hang is meant to outlast its timeout).
fn is_success(reply: Reply) -> bool {
    matches!(reply, Reply::Status(status) if (200..300).contains(&status))
}

#[derive(Debug)]
struct Inner {
    requests: Mutex<Vec<ReceivedRequest>>,
    /// The reply given to each request of `requests`, in the same order.
    replies: Mutex<Vec<Reply>>,
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
            replies: Mutex::new(Vec::new()),
            script: Mutex::new(Script {
                next: VecDeque::new(),
                default,
                flapping: None,
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

    /// From now on, flap: answers cycle through `replies` (e.g. 200, 500 and a hang longer
    /// than hookline's delivery timeout), except that one message (`webhook-id`) never fails
    /// more than `max_failures` times in a row: then it gets a 200. Scripted replies
    /// ([`FakeSubscriber::fail_times`]) still come first.
    pub fn set_flapping(&self, replies: &[Reply], max_failures: usize) {
        self.inner.script.lock().expect("lock").flapping = Some(Flapping {
            replies: replies.to_vec(),
            max_failures,
            position: 0,
            failures: HashMap::new(),
        });
    }

    /// Stops flapping: answers the default reply again.
    pub fn stop_flapping(&self) {
        self.inner.script.lock().expect("lock").flapping = None;
    }

    /// The requests answered with a 2xx status (what hookline counts as delivered).
    pub fn acknowledged(&self) -> Vec<ReceivedRequest> {
        let requests = self.inner.requests.lock().expect("lock");
        let replies = self.inner.replies.lock().expect("lock");
        requests
            .iter()
            .zip(replies.iter())
            .filter(|(_, reply)| is_success(**reply))
            .map(|(request, _)| request.clone())
            .collect()
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
    let request = ReceivedRequest { at, headers, body };
    let reply = {
        let mut script = inner.script.lock().expect("lock");
        match script.next.pop_front() {
            Some(reply) => reply,
            None => {
                let default = script.default;
                match &mut script.flapping {
                    Some(flapping) => flapping.next(request.header("webhook-id")),
                    None => default,
                }
            }
        }
    };
    {
        // Both under their locks at once, so that the two lists stay in step.
        let mut requests = inner.requests.lock().expect("lock");
        let mut replies = inner.replies.lock().expect("lock");
        requests.push(request);
        replies.push(reply);
    }
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

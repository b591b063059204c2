//! A replay server for tests: answers with scripted responses (Microsoft's examples from
//! ../shared/specs/azure-rest-api) in order and records every request. Shared by the azure
//! crate's tests and the CLI's (`#[path]`-included, so it is not shipped).
#![allow(dead_code)]
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

const SPECS: &str = "specs/azure-rest-api/specification";

/// Whether Microsoft's examples are beside the project (CI has the shared folder): under CI
/// their absence fails the test, elsewhere the test is recorded as skipped ([`testkit::require`]).
pub fn have_specs() -> bool {
    testkit::require(testkit::missing_shared(SPECS))
}

pub fn example(rel: &str) -> Value {
    let p = testkit::shared_dir().join(SPECS).join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared specs folder sits beside the project)",
            p.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

pub fn response(rel: &str, status: &str) -> Value {
    example(rel)["responses"][status]["body"].clone()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub seen: Seen,
    pub headers: Vec<(String, String)>,
    pub raw_body: String,
    pub raw: Vec<u8>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Clone)]
pub struct Replay {
    pub base: String,
    script: Arc<Mutex<VecDeque<Reply>>>,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Replay {
    pub async fn start() -> Replay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let r = Replay {
            base,
            script: Arc::default(),
            log: Arc::default(),
        };
        let srv = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let srv = srv.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let srv = srv.clone();
                        async move { Ok::<_, std::convert::Infallible>(srv.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        r
    }

    async fn answer(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let method = req.method().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        let raw = req.into_body().collect().await.unwrap().to_bytes();
        let raw_body = String::from_utf8_lossy(&raw).into_owned();
        self.log.lock().unwrap().push(Recorded {
            seen: Seen {
                method,
                path,
                auth,
                body: serde_json::from_slice(&raw).ok(),
            },
            headers,
            raw_body,
            raw: raw.to_vec(),
        });
        let reply = self.script.lock().unwrap().pop_front().unwrap_or(Reply {
            status: 599,
            headers: vec![],
            body: b"script exhausted".to_vec(),
        });
        let mut b = hyper::Response::builder().status(reply.status);
        for (k, v) in reply.headers {
            b = b.header(k, v);
        }
        b.body(Full::new(Bytes::from(reply.body))).unwrap()
    }

    /// Queues a reply; `{base}` in header values becomes the server's URL.
    pub fn push(&self, status: u16, headers: &[(&str, &str)], body: Option<&Value>) {
        self.script.lock().unwrap().push_back(Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.replace("{base}", &self.base)))
                .collect(),
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        });
    }

    /// Queues a reply with a body as is (an XML storage error).
    pub fn push_raw(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.script.lock().unwrap().push_back(Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        });
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.seen.clone())
            .collect()
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    pub fn exhausted(&self) -> bool {
        self.script.lock().unwrap().is_empty()
    }
}

//! A Hugging Face Hub stand-in on 127.0.0.1 that speaks the routes `hf-hub` uses:
//! `GET /api/models/{repo}/revision/{rev}` and `GET|HEAD /{repo}/resolve/{rev}/{file}` with
//! `Range`, `ETag`, `X-Repo-Commit`, `Content-Range` and the Hub's `X-Error-Code` header.
//! It records every request so tests can count downloads and check headers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Response, Server};

/// One commit of a repository.
#[derive(Clone)]
pub struct Commit {
    pub sha: String,
    /// Branch or tag names that point at this commit.
    pub refs: Vec<String>,
    pub files: BTreeMap<String, Vec<u8>>,
    /// Files listed by the API but answered with 404 (a broken upload).
    pub missing: Vec<String>,
}

#[derive(Clone)]
pub struct RepoSpec {
    pub commits: Vec<Commit>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub private_token: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
}

pub struct HubServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    pub fn start(repos: BTreeMap<String, RepoSpec>) -> Self {
        let server = Arc::new(Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let url = format!(
            "http://{}",
            server.server_addr().to_ip().expect("ip address")
        );
        let requests = Arc::new(Mutex::new(vec![]));
        let (s, r) = (server.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let header = |name: &str| {
                    req.headers()
                        .iter()
                        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                        .map(|h| h.value.as_str().to_string())
                };
                let record = Request {
                    method: req.method().to_string(),
                    url: req.url().to_string(),
                    authorization: header("Authorization"),
                    range: header("Range"),
                };
                r.lock().unwrap().push(record.clone());
                let response = answer(&repos, &record, req.method() == &Method::Head);
                let _ = req.respond(response);
            }
        });
        Self {
            url,
            requests,
            server,
            thread: Some(thread),
        }
    }

    /// Requests that transferred file content (not metadata probes of one byte).
    pub fn downloads(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| {
                r.url.contains("/resolve/")
                    && r.method == "GET"
                    && r.range.as_deref() != Some("bytes=0-0")
            })
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn h(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

type Resp = Response<std::io::Cursor<Vec<u8>>>;

fn error(status: u16, code: Option<&str>, msg: &str) -> Resp {
    let mut r = Response::from_string(format!("{{\"error\":\"{msg}\"}}")).with_status_code(status);
    if let Some(c) = code {
        r = r.with_header(h("X-Error-Code", c));
    }
    r.with_header(h("X-Error-Message", msg))
}

fn find_commit<'a>(spec: &'a RepoSpec, rev: &str) -> Option<&'a Commit> {
    spec.commits
        .iter()
        .find(|c| c.sha == rev || c.refs.iter().any(|r| r == rev))
}

fn answer(repos: &BTreeMap<String, RepoSpec>, req: &Request, head: bool) -> Resp {
    let path = req.url.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/models/{org}/{name}/revision/{rev}
    if parts.len() == 6 && parts[0] == "api" && parts[1] == "models" && parts[4] == "revision" {
        let repo = format!("{}/{}", parts[2], parts[3]);
        let Some(spec) = repos.get(&repo) else {
            return error(404, Some("RepoNotFound"), "Repository not found");
        };
        if let Some(t) = &spec.private_token {
            if req.authorization.as_deref() != Some(&format!("Bearer {t}")) {
                return error(401, None, "Invalid credentials in Authorization header");
            }
        }
        let rev = parts[5].replace("%2F", "/");
        let Some(c) = find_commit(spec, &rev) else {
            return error(404, Some("RevisionNotFound"), "Invalid rev id");
        };
        let siblings: Vec<serde_json::Value> = c
            .files
            .keys()
            .chain(&c.missing)
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": repo, "sha": c.sha, "siblings": siblings });
        return Response::from_string(body.to_string())
            .with_header(h("Content-Type", "application/json"));
    }
    // /{org}/{name}/resolve/{rev}/{file...}
    if parts.len() >= 5 && parts[2] == "resolve" {
        let repo = format!("{}/{}", parts[0], parts[1]);
        let Some(spec) = repos.get(&repo) else {
            return error(404, Some("RepoNotFound"), "Repository not found");
        };
        if let Some(t) = &spec.private_token {
            if req.authorization.as_deref() != Some(&format!("Bearer {t}")) {
                return error(401, None, "Invalid credentials in Authorization header");
            }
        }
        let rev = parts[3].replace("%2F", "/");
        let Some(c) = find_commit(spec, &rev) else {
            return error(404, Some("RevisionNotFound"), "Invalid rev id");
        };
        let file = parts[4..].join("/");
        let Some(data) = c.files.get(&file) else {
            return error(404, Some("EntryNotFound"), "Entry not found");
        };
        let etag = format!("\"{:016x}{:08x}\"", fnv(data), data.len());
        let size = data.len();
        let (status, body, content_range) = match req.range.as_deref().and_then(parse_range) {
            Some((start, end)) => {
                let end = end
                    .unwrap_or(size.saturating_sub(1))
                    .min(size.saturating_sub(1));
                let body = if start <= end && start < size {
                    data[start..=end].to_vec()
                } else {
                    vec![]
                };
                (206, body, Some(format!("bytes {start}-{end}/{size}")))
            }
            None => (200, data.clone(), None),
        };
        let mut r = Response::from_data(if head { vec![] } else { body })
            .with_status_code(status)
            .with_header(h("ETag", &etag))
            .with_header(h("X-Repo-Commit", &c.sha))
            .with_header(h("Accept-Ranges", "bytes"));
        if let Some(cr) = content_range {
            r = r.with_header(h("Content-Range", &cr));
        }
        return r;
    }
    error(404, None, "no such route")
}

fn parse_range(v: &str) -> Option<(usize, Option<usize>)> {
    let r = v.strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    Some((
        a.parse().ok()?,
        if b.is_empty() {
            None
        } else {
            Some(b.parse().ok()?)
        },
    ))
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

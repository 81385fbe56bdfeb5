#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! The v2 write API (`/api/v2/write?org=&bucket=&precision=`, `Authorization: Token`) and the
//! v2 bucket check.
//!
//! Why not the real server: the InfluxDB installable here is Debian's 1.6, which has no
//! `/api/v2/write` (it arrived in 1.8; `tests/influx.rs::this_server_has_no_v2_write_api`
//! shows the 404) and no bucket API. So these tests — and only these — use a tiny recording
//! HTTP receiver on a local port that answers as InfluxDB 2.x documents it, and check the
//! requests the sink builds: URL, query, headers, body, and how the sink reacts to 5xx, 429,
//! 4xx and a server that never answers on that path. Everything v1 runs against the real
//! server in `tests/influx.rs`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelperf_influx::{ErrorClass, InfluxApi, InfluxConfig, InfluxError, Point, Sink, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as it arrived.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What the receiver answers, in order (204 once the script is used up).
enum Answer {
    Status {
        status: u16,
        headers: &'static str,
        body: &'static str,
    },
    /// Accept, read the request, never answer.
    Hang,
}

fn answer(status: u16, body: &'static str) -> Answer {
    Answer::Status { status, headers: "", body }
}

struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Receiver {
    async fn start(script: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let recorded = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (recorded, script) = (recorded.clone(), script.clone());
                tokio::spawn(async move { serve(stream, recorded, script).await });
            }
        });
        Self { url, requests }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(mut stream: TcpStream, recorded: Arc<Mutex<Vec<Recorded>>>, script: Arc<Mutex<VecDeque<Answer>>>) {
    let mut data = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            return;
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap().split(' ');
    let method = request_line.next().unwrap().to_owned();
    let target = request_line.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.parse().unwrap()).unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = url_decode_pairs(query);
    recorded.lock().unwrap().push(Recorded { method, path: path.to_owned(), query, headers, body });
    let next = script.lock().unwrap().pop_front().unwrap_or(answer(204, ""));
    match next {
        Answer::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
        Answer::Status { status, headers, body } => {
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            let _ = stream.shutdown().await;
        }
    }
}

/// `a=b&c=d+e` → pairs, percent- and plus-decoded.
fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn v2(url: &str) -> InfluxConfig {
    InfluxConfig {
        url: url.to_owned(),
        api: InfluxApi::V2,
        org: Some("acme corp".into()),
        bucket: Some("perf".into()),
        token: Some("tok-123==".into()),
        max_retries: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..InfluxConfig::default()
    }
}

fn points(n: i64) -> Vec<Point> {
    (0..n).map(|i| Point::new("model_perf", 1_700_000_040).tag("model", format!("m {i}")).int("count", i)).collect()
}

#[tokio::test]
async fn v2_writes_carry_org_bucket_precision_and_token() {
    let receiver = Receiver::start(vec![]).await;
    let sink = Sink::new(InfluxConfig { batch_size: 2, ..v2(&receiver.url) }).unwrap();
    let points = points(3);
    let stats = sink.write("1m", &points).await.unwrap();
    assert_eq!((stats.points, stats.requests, stats.retries), (3, 2, 0));

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    let expected = encode(&points, 2).batches;
    for (request, body) in requests.iter().zip(&expected) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/api/v2/write");
        assert_eq!(request.query, pairs(&[("org", "acme corp"), ("bucket", "perf"), ("precision", "s")]));
        assert_eq!(request.header("authorization"), Some("Token tok-123=="));
        assert_eq!(request.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(&request.body, body);
    }
    assert_eq!(
        requests[0].body,
        b"model_perf,model=m\\ 0 count=0i 1700000040\nmodel_perf,model=m\\ 1 count=1i 1700000040\n"
    );
}

#[tokio::test]
async fn v2_without_a_token_uses_the_user_and_password_of_influxdb_1_8() {
    let receiver = Receiver::start(vec![]).await;
    let cfg = InfluxConfig {
        token: None,
        org: None,
        bucket: Some("modelperf/1m".into()),
        user: Some("writer".into()),
        password: Some("pw".into()),
        ..v2(&receiver.url)
    };
    Sink::new(cfg).unwrap().write("1m", &points(1)).await.unwrap();
    let request = &receiver.requests()[0];
    assert_eq!(request.header("authorization"), Some("Token writer:pw"));
    assert_eq!(request.query, pairs(&[("bucket", "modelperf/1m"), ("precision", "s")]));
}

#[tokio::test]
async fn v2_retries_5xx_and_429_then_succeeds() {
    let receiver = Receiver::start(vec![
        answer(503, r#"{"code":"unavailable","message":"busy"}"#),
        Answer::Status { status: 429, headers: "Retry-After: 0\r\n", body: "" },
        answer(500, "oops"),
    ])
    .await;
    let sink = Sink::new(v2(&receiver.url)).unwrap();
    let stats = sink.write("1m", &points(2)).await.unwrap();
    assert_eq!((stats.points, stats.requests, stats.retries), (2, 1, 3));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|r| r.body == requests[0].body), "every attempt sends the same lines");
}

#[tokio::test]
async fn v2_gives_up_after_the_bounded_attempts_with_a_retryable_error() {
    let receiver = Receiver::start((0..10).map(|_| answer(503, "busy")).collect()).await;
    let sink = Sink::new(v2(&receiver.url)).unwrap();
    let err = sink.write("1m", &points(1)).await.unwrap_err();
    assert!(matches!(err, InfluxError::Unavailable { attempts: 4, status: Some(503), .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(receiver.requests().len(), 4);
}

#[tokio::test]
async fn v2_refusals_are_permanent() {
    let receiver = Receiver::start(vec![answer(400, r#"{"code":"invalid","message":"unable to parse 'x'"}"#)]).await;
    let sink = Sink::new(v2(&receiver.url)).unwrap();
    let err = sink.write("1m", &points(1)).await.unwrap_err();
    assert!(matches!(err, InfluxError::Rejected { status: 400, attempts: 1, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Terminate);
    assert!(err.to_string().contains("unable to parse"), "{err}");
    assert_eq!(receiver.requests().len(), 1);

    let receiver =
        Receiver::start(vec![answer(401, r#"{"code":"unauthorized","message":"unauthorized access"}"#)]).await;
    let err = Sink::new(v2(&receiver.url)).unwrap().write("1m", &points(1)).await.unwrap_err();
    assert_eq!((err.status(), err.class()), (Some(401), ErrorClass::Fatal));
}

#[tokio::test]
async fn v2_a_server_that_never_answers_times_out_as_retryable() {
    let receiver = Receiver::start(vec![Answer::Hang, Answer::Hang]).await;
    let cfg = InfluxConfig { timeout: Duration::from_millis(200), max_retries: 1, ..v2(&receiver.url) };
    let err = Sink::new(cfg).unwrap().write("1m", &points(1)).await.unwrap_err();
    assert!(matches!(err, InfluxError::Unavailable { attempts: 2, status: None, .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn v2_ensure_checks_the_bucket_and_never_creates_it() {
    let receiver = Receiver::start(vec![
        answer(200, r#"{"buckets":[{"id":"1","name":"perf","retentionRules":[]}]}"#),
        answer(200, r#"{"buckets":[]}"#),
        answer(404, r#"{"code":"not found","message":"organization name \"acme corp\" not found"}"#),
        answer(404, "404 page not found\n"),
    ])
    .await;
    let sink = Sink::new(v2(&receiver.url)).unwrap();
    sink.ensure().await.unwrap();
    let err = sink.ensure().await.unwrap_err();
    assert!(matches!(err, InfluxError::MissingBucket { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(err.to_string().contains("\"perf\" in org \"acme corp\""), "{err}");
    let err = sink.ensure().await.unwrap_err();
    assert!(matches!(err, InfluxError::MissingBucket { .. }), "{err:?}");
    // No bucket API at all (1.8, 3.x): nothing to check.
    sink.ensure().await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 4);
    for r in &requests {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/api/v2/buckets"));
        assert_eq!(r.query, pairs(&[("name", "perf"), ("org", "acme corp")]));
        assert_eq!(r.header("authorization"), Some("Token tok-123=="));
    }
}

//! Per-request cost of session affinity: extracting a key and verifying a
//! sticky cookie, each group with its baseline (a plain header lookup).
//!
//! The request carries five cookies, as a browser commonly sends (analytics,
//! consent, session, preferences and the sticky cookie).
//!
//! On a machine others keep busy, `TOWER_LB_BENCH_CLOCK=thread-cpu cargo
//! bench --bench sticky` measures the CPU time of the benchmarking thread
//! instead of the wall-clock time, so that time spent descheduled is not
//! counted.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::Criterion;
use http::{HeaderMap, HeaderValue, Request};
use tower_lb::sticky::{
    ClientAddr, ClientIp, CookieKey, FirstOf, HeaderKey, KeyExtractor, Secret, Secrets,
    StickyCookie, TokenFormat,
};

fn secret() -> Secret {
    Secret::generate().expect("the OS random number generator")
}

fn request(cookie: &str) -> Request<()> {
    let mut req = Request::builder()
        .uri("/play?room=lobby-7")
        .header("host", "game.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "*/*")
        .header("x-session", "s-7c1f0b2e")
        .header("x-forwarded-for", "198.51.100.23, 203.0.113.9")
        .header("cookie", cookie)
        .body(())
        .expect("a valid request");
    req.extensions_mut()
        .insert(ClientAddr("192.0.2.1:51234".parse().expect("an address")));
    req
}

fn five_cookies(sticky: &str) -> String {
    format!(
        "_ga=GA1.2.1234567890.1700000000; consent=analytics%3Dno; session=u-42-8f3a; theme=dark; lb={sticky}"
    )
}

fn extract<M: Measurement>(c: &mut Criterion<M>) {
    let req = request(&five_cookies("x"));
    let mut g = c.benchmark_group("sticky/extract");
    g.bench_function("baseline: headers.get(cookie)", |b| {
        b.iter(|| {
            black_box(&req)
                .headers()
                .get("cookie")
                .map(HeaderValue::len)
        })
    });
    let cookie = CookieKey::new("session").expect("a cookie name");
    g.bench_function("cookie, third of five", |b| {
        b.iter(|| cookie.extract(black_box(&req)).map(|k| k.as_bytes().len()))
    });
    let header = HeaderKey::new("x-session").expect("a header name");
    g.bench_function("header", |b| {
        b.iter(|| header.extract(black_box(&req)).map(|k| k.as_bytes().len()))
    });
    let peer = ClientIp::new();
    g.bench_function("client ip, peer", |b| {
        b.iter(|| peer.extract(black_box(&req)).map(|k| k.as_bytes().len()))
    });
    let forwarded = ClientIp::new().trusted_hops(1);
    g.bench_function("client ip, x-forwarded-for, 1 trusted hop", |b| {
        b.iter(|| {
            forwarded
                .extract(black_box(&req))
                .map(|k| k.as_bytes().len())
        })
    });
    let chain = FirstOf((
        CookieKey::new("sid").expect("a cookie name"),
        HeaderKey::new("x-sid").expect("a header name"),
        ClientIp::new(),
    ));
    g.bench_function("first of: cookie miss, header miss, client ip", |b| {
        b.iter(|| chain.extract(black_box(&req)).map(|k| k.as_bytes().len()))
    });
    g.finish();
}

fn verify<M: Measurement>(c: &mut Criterion<M>) {
    let sticky = StickyCookie::new("lb", secret())
        .expect("a valid configuration")
        .max_age(Duration::from_secs(3600))
        .expect("a valid max-age");
    let token = sticky
        .token_at("10.0.0.1:8080", std::time::SystemTime::now())
        .expect("a valid id");
    let valid = request(&five_cookies(&token)).into_parts().0.headers;
    // One character of the tag changed: the whole MAC is computed before
    // the token is rejected.
    let mut forged_token = token.clone().into_bytes();
    let i = forged_token.len() - 5;
    forged_token[i] = if forged_token[i] == b'A' { b'B' } else { b'A' };
    let forged = request(&five_cookies(
        std::str::from_utf8(&forged_token).expect("ascii"),
    ))
    .into_parts()
    .0
    .headers;
    let absent = request("_ga=GA1.2.1; consent=no; session=u-42; theme=dark; lang=fr")
        .into_parts()
        .0
        .headers;

    // The default configuration: a session cookie, whose token has no
    // expiry, so verifying it reads no clock.
    let session = StickyCookie::new("lb", secret()).expect("a valid configuration");
    let session_headers = |sticky: &StickyCookie| {
        let token = sticky
            .token_at("10.0.0.1:8080", std::time::SystemTime::now())
            .expect("a valid id");
        request(&five_cookies(&token)).into_parts().0.headers
    };
    let valid_session = session_headers(&session);

    // The same with the standard AEAD.
    let aead = StickyCookie::new("lb", secret())
        .expect("a valid configuration")
        .token_format(TokenFormat::XChaCha20Poly1305);
    let valid_aead = session_headers(&aead);
    let forged_aead = {
        let mut h = valid_aead.clone();
        let line = h["cookie"].to_str().expect("ascii").to_owned();
        let mut bytes = line.into_bytes();
        let i = bytes.len() - 5;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        h.insert(
            "cookie",
            HeaderValue::from_bytes(&bytes).expect("a header value"),
        );
        h
    };

    // After a rotation: a cookie made with the secret now previous (the
    // current one is tried first), with two previous secrets accepted.
    let secrets = Secrets::new(secret());
    let rotating = StickyCookie::new("lb", secrets.clone()).expect("a valid configuration");
    let before_rotation = session_headers(&rotating);
    secrets
        .rotate(secret())
        .expect("room for a previous secret");
    secrets
        .add_previous(secret())
        .expect("room for a previous secret");
    let after_rotation = session_headers(&rotating);

    let mut g = c.benchmark_group("sticky/verify");
    g.bench_function("baseline: headers.get(cookie)", |b| {
        b.iter(|| black_box(&valid).get("cookie").map(HeaderValue::len))
    });
    g.bench_function("valid cookie (max-age), last of five", |b| {
        b.iter(|| sticky.verify(black_box(&valid)).map(|v| v.id().len()))
    });
    g.bench_function("valid session cookie (no max-age), last of five", |b| {
        b.iter(|| {
            session
                .verify(black_box(&valid_session))
                .map(|v| v.id().len())
        })
    });
    g.bench_function(
        "valid session cookie, XChaCha20-Poly1305, last of five",
        |b| b.iter(|| aead.verify(black_box(&valid_aead)).map(|v| v.id().len())),
    );
    g.bench_function("forged cookie, XChaCha20-Poly1305, last of five", |b| {
        b.iter(|| aead.verify(black_box(&forged_aead)).is_some())
    });
    g.bench_function(
        "valid session cookie, current secret of a rotating handle",
        |b| {
            b.iter(|| {
                rotating
                    .verify(black_box(&after_rotation))
                    .map(|v| v.id().len())
            })
        },
    );
    g.bench_function("valid session cookie, made with a previous secret", |b| {
        b.iter(|| {
            rotating
                .verify(black_box(&before_rotation))
                .map(|v| v.id().len())
        })
    });
    g.bench_function("forged cookie, last of five", |b| {
        b.iter(|| sticky.verify(black_box(&forged)).is_some())
    });
    g.bench_function("no sticky cookie among five", |b| {
        b.iter(|| sticky.verify(black_box(&absent)).is_some())
    });
    g.bench_function("issue: set_cookie", |b| {
        b.iter(|| {
            sticky
                .set_cookie(black_box("10.0.0.1:8080"))
                .map(|v| v.len())
        })
    });
    g.bench_function("strip from five cookies", |b| {
        b.iter_batched(
            || valid.clone(),
            |mut h: HeaderMap| {
                sticky.strip(&mut h);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The CPU time the measuring thread used, instead of the wall-clock time:
/// on a shared machine whose other users keep both cores busy, time spent
/// descheduled no longer counts. Chosen with `TOWER_LB_BENCH_CLOCK=thread-cpu`.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, d: &Duration) -> f64 {
        d.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL_TIME: WallTime = WallTime;
        WALL_TIME.formatter()
    }
}

fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn main() {
    if std::env::var("TOWER_LB_BENCH_CLOCK").as_deref() == Ok("thread-cpu") {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpuTime)
            .configure_from_args();
        extract(&mut c);
        verify(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        extract(&mut c);
        verify(&mut c);
        c.final_summary();
    }
}

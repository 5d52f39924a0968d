//! What the endpoint answers, without sockets: the routes, basic-auth
//! credentials, gzip.

use std::io::Write as _;

use base64::Engine as _;

/// An answer to one request.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers besides Content-Length.
    pub headers: Vec<(&'static str, String)>,
    /// The body (empty for HEAD).
    pub body: Vec<u8>,
}

/// Content type of the Prometheus text format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The page at `/`.
const INDEX: &str = "<html><head><title>resonance</title></head><body>resonance: metrics at <a href=\"/metrics\">/metrics</a></body></html>\n";

fn text(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type", "text/plain; charset=utf-8".to_owned())],
        body: body.as_bytes().to_vec(),
    }
}

/// 401 with the challenge that makes clients send credentials.
pub fn unauthorized() -> Reply {
    let mut reply = text(401, "Unauthorized\n");
    reply
        .headers
        .push(("WWW-Authenticate", "Basic realm=\"resonance\"".to_owned()));
    reply
}

/// The answer to `method path` from an authorised client; `metrics`
/// encodes the scrape. `gzip`: the client accepts it.
pub fn respond(
    method: &str,
    path: &str,
    gzip: bool,
    metrics: impl FnOnce() -> Result<String, String>,
) -> Reply {
    let head = method == "HEAD";
    if method != "GET" && !head {
        let mut reply = text(405, "only GET and HEAD are served here\n");
        reply.headers.push(("Allow", "GET, HEAD".to_owned()));
        return reply;
    }
    // The query string does not choose anything here.
    let path = path.split('?').next().unwrap_or(path);
    let mut reply = match path {
        "/metrics" => match metrics() {
            Ok(text) => Reply {
                status: 200,
                headers: vec![("Content-Type", METRICS_TYPE.to_owned())],
                body: text.into_bytes(),
            },
            Err(error) => text(500, &format!("encoding metrics: {error}\n")),
        },
        "/" => Reply {
            status: 200,
            headers: vec![("Content-Type", "text/html; charset=utf-8".to_owned())],
            body: INDEX.as_bytes().to_vec(),
        },
        _ => text(404, "not found: metrics are at /metrics\n"),
    };
    if reply.status == 200 && path == "/metrics" {
        reply.headers.push(("Vary", "Accept-Encoding".to_owned()));
        if gzip && let Some(compressed) = compress(&reply.body) {
            reply.body = compressed;
            reply.headers.push(("Content-Encoding", "gzip".to_owned()));
        }
    }
    if head {
        reply.body.clear();
    }
    reply
}

/// Whether an `Accept-Encoding` header accepts gzip (`gzip;q=0` refuses it).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

fn compress(body: &[u8]) -> Option<Vec<u8>> {
    // Level 1: a scrape of a few hundred KiB shrinks ~10x already, and the
    // agent's CPU is the host's.
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

/// The user and password of an `Authorization: Basic ...` header.
pub fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Result<String, String> {
        Ok("resonance_up 1\n".repeat(100))
    }

    #[test]
    fn routes() {
        assert_eq!(respond("GET", "/metrics", false, scrape).status, 200);
        assert_eq!(respond("GET", "/metrics?x=1", false, scrape).status, 200);
        let index = respond("GET", "/", false, scrape);
        assert!(
            String::from_utf8(index.body)
                .unwrap()
                .contains("href=\"/metrics\"")
        );
        assert_eq!(respond("GET", "/other", false, scrape).status, 404);
        let post = respond("POST", "/metrics", false, scrape);
        assert_eq!(post.status, 405);
        assert!(post.headers.contains(&("Allow", "GET, HEAD".to_owned())));
        let head = respond("HEAD", "/metrics", false, scrape);
        assert!(head.status == 200 && head.body.is_empty());
        let failed = respond("GET", "/metrics", false, || Err("boom".to_owned()));
        assert_eq!(failed.status, 500);
    }

    #[test]
    fn gzip_only_when_asked_and_it_decodes_to_the_scrape() {
        let plain = respond("GET", "/metrics", false, scrape);
        let zipped = respond("GET", "/metrics", true, scrape);
        assert!(
            zipped
                .headers
                .contains(&("Content-Encoding", "gzip".to_owned()))
        );
        assert!(zipped.body.len() < plain.body.len() / 5);
        let mut decoded = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&zipped.body[..]),
            &mut decoded,
        )
        .unwrap();
        assert_eq!(decoded.as_bytes(), plain.body);
        assert!(accepts_gzip("gzip, deflate, br"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(!accepts_gzip("gzip;q=0, deflate"));
        assert!(!accepts_gzip("identity"));
    }

    #[test]
    fn basic_credentials_are_decoded_and_garbage_is_none() {
        // "prometheus:s3cr:et" — a password may hold a ':'.
        assert_eq!(
            basic_credentials("Basic cHJvbWV0aGV1czpzM2NyOmV0"),
            Some(("prometheus".to_owned(), "s3cr:et".to_owned()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        assert_eq!(basic_credentials("Basic"), None);
    }
}

//! Field names as they are read off the wire.
//!
//! [`HeaderName::from_bytes`] copies every name through a lower-casing table
//! before it looks the name up: about 120 instructions a field, five or six
//! times a response. Most peers spell the common names one of two ways, as
//! nginx, Apache, Go and curl do (`Content-Length`) or as hyper and HTTP/2 do
//! (`content-length`); [`field_name`] recognises those spellings in a few
//! compares and leaves every other name to `from_bytes`.

use http::header::{self, HeaderName, HeaderValue, InvalidHeaderName};

/// `name` as a [`HeaderName`]: the same name, and the same errors, as
/// [`HeaderName::from_bytes`], quicker for the common names in their common
/// spellings.
pub(crate) fn field_name(name: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let known = match name {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Connection" | b"connection" => header::CONNECTION,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"ETag" | b"etag" => header::ETAG,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
        b"Vary" | b"vary" => header::VARY,
        b"Location" | b"location" => header::LOCATION,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        b"Expires" | b"expires" => header::EXPIRES,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Referer" | b"referer" => header::REFERER,
        b"Authorization" | b"authorization" => header::AUTHORIZATION,
        b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
        _ => return HeaderName::from_bytes(name),
    };
    Ok(known)
}

/// `value` as a [`HeaderValue`] that needs no bytes of its own, if it is
/// one of the values most responses carry (as HTTP/2's static table has
/// them): each field value read off the wire is otherwise a slice of the
/// head's bytes, a count taken on them and given back (two atomic
/// operations). The same value, byte for byte, as
/// [`HeaderValue::from_bytes`] makes.
pub(crate) fn common_value(value: &[u8]) -> Option<HeaderValue> {
    let known = match value {
        b"keep-alive" => "keep-alive",
        b"close" => "close",
        b"chunked" => "chunked",
        b"gzip" => "gzip",
        b"br" => "br",
        b"deflate" => "deflate",
        b"bytes" => "bytes",
        b"0" => "0",
        b"*" => "*",
        b"text/plain" => "text/plain",
        b"text/html" => "text/html",
        b"text/css" => "text/css",
        b"text/javascript" => "text/javascript",
        b"application/json" => "application/json",
        b"application/javascript" => "application/javascript",
        b"application/octet-stream" => "application/octet-stream",
        b"text/plain; charset=utf-8" => "text/plain; charset=utf-8",
        b"text/html; charset=utf-8" => "text/html; charset=utf-8",
        b"text/html; charset=UTF-8" => "text/html; charset=UTF-8",
        b"application/json; charset=utf-8" => "application/json; charset=utf-8",
        b"no-cache" => "no-cache",
        b"no-store" => "no-store",
        b"private" => "private",
        b"nosniff" => "nosniff",
        b"DENY" => "DENY",
        b"SAMEORIGIN" => "SAMEORIGIN",
        b"Accept-Encoding" => "Accept-Encoding",
        b"Origin" => "Origin",
        b"websocket" => "websocket",
        b"Upgrade" => "Upgrade",
        b"upgrade" => "upgrade",
        _ => return None,
    };
    Some(HeaderValue::from_static(known))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_common_value_is_the_value_from_bytes_makes() {
        let values: &[&[u8]] = &[
            b"keep-alive",
            b"close",
            b"chunked",
            b"gzip",
            b"text/plain",
            b"application/json; charset=utf-8",
            b"nosniff",
            b"upgrade",
        ];
        for value in values {
            let common = common_value(value).expect("a common value");
            assert_eq!(common, HeaderValue::from_bytes(value).unwrap());
            assert_eq!(common.as_bytes(), *value);
            assert!(!common.is_sensitive());
        }
        for other in [
            &b"Keep-Alive"[..],
            b"close ",
            b"",
            b"nginx/1.22.1",
            b"10",
            b"\xff",
        ] {
            assert!(common_value(other).is_none(), "{other:?}");
        }
    }

    /// Every spelling: what `from_bytes` makes of it, errors included.
    #[test]
    fn same_as_from_bytes() {
        let names: &[&[u8]] = &[
            b"Host",
            b"host",
            b"HOST",
            b"hOsT",
            b"Content-Length",
            b"content-length",
            b"CONTENT-LENGTH",
            b"Content-length",
            b"Transfer-Encoding",
            b"transfer-encoding",
            b"Connection",
            b"Date",
            b"Server",
            b"Content-Type",
            b"Cache-Control",
            b"Last-Modified",
            b"ETag",
            b"etag",
            b"Accept-Ranges",
            b"Vary",
            b"Location",
            b"Set-Cookie",
            b"Expires",
            b"User-Agent",
            b"Accept",
            b"Accept-Encoding",
            b"Accept-Language",
            b"Cookie",
            b"Referer",
            b"Authorization",
            b"Content-Encoding",
            b"X-Forwarded-For",
            b"x-custom",
            b"Keep-Alive",
            b"Hostx",
            b"Hos",
            b"",
            b"Host ",
            b"Ho st",
            b"Content-Length:",
            b"\xffHost",
        ];
        for name in names {
            let fast = field_name(name);
            let slow = HeaderName::from_bytes(name);
            assert_eq!(fast.is_ok(), slow.is_ok(), "{name:?}");
            if let (Ok(fast), Ok(slow)) = (fast, slow) {
                assert_eq!(fast, slow, "{name:?}");
                assert_eq!(fast.as_str(), slow.as_str(), "{name:?}");
            }
        }
    }

    /// A known name in a known spelling is the standard header, which
    /// compares and hashes as `from_bytes`'s does.
    #[test]
    fn known_names_are_standard() {
        let mut map = http::HeaderMap::new();
        map.insert(field_name(b"Content-Length").unwrap(), "1".parse().unwrap());
        assert_eq!(map.get(header::CONTENT_LENGTH).unwrap(), "1");
        assert_eq!(map.get("content-length").unwrap(), "1");
        assert_eq!(field_name(b"date").unwrap(), header::DATE);
    }
}

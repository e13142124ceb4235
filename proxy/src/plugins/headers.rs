//! Pingora's headers as the plugin host's header lists (with `:method`,
//! `:path`, `:authority`, `:scheme`, `:status`) and back: only what a plugin
//! changed is written back. The lists' strings are recycled per thread, so a
//! request through a plugin allocates none for its headers once warm.

use pingora::http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use std::cell::RefCell;

/// One header as the ABI's lists hold it: name and value.
type Pair = (String, String);

/// Header lists kept per thread for reuse (each with its strings): one per
/// plugin request in flight on the thread, up to this many (each request
/// holds its request list until it ends, so fewer than the requests in
/// flight means new lists under load).
const SPARE_LISTS: usize = 64;
/// A list whose strings hold more than this many bytes is not kept, so
/// one client's large headers stay with its own request.
const SPARE_LIST_BYTES: usize = 4 * 1024;
/// Headers cut from a list refilled with fewer (a request's list reused for a
/// response, say) are kept for the next longer one, up to this many per thread...
const SPARE_PAIRS: usize = 256;
/// ...each holding at most this many bytes. All told, a thread keeps at most
/// 64 × 4 KiB + 256 × 512 B = 384 KiB of header strings.
const SPARE_PAIR_BYTES: usize = 512;

/// What a thread keeps for the next requests' header lists.
struct Spare {
    lists: Vec<Vec<Pair>>,
    pairs: Vec<Pair>,
}

thread_local! {
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            lists: Vec::new(),
            pairs: Vec::new(),
        })
    };
}

fn capacity(pair: &Pair) -> usize {
    pair.0.capacity() + pair.1.capacity()
}

/// A list to fill: a spare one (strings and all) when there is one.
fn spare_list() -> Vec<Pair> {
    SPARE
        .with(|s| s.borrow_mut().lists.pop())
        .unwrap_or_default()
}

/// Keep a list done with for the next request on this thread, unless
/// [`SPARE_LISTS`] are kept already or it holds over [`SPARE_LIST_BYTES`].
pub fn recycle(list: Vec<Pair>) {
    if list.iter().map(capacity).sum::<usize>() > SPARE_LIST_BYTES {
        return;
    }
    SPARE.with(|s| {
        let lists = &mut s.borrow_mut().lists;
        if lists.len() < SPARE_LISTS {
            lists.push(list);
        }
    });
}

/// Overwrite `list` with `items`, reusing its strings' buffers, and those of
/// headers other lists no longer needed.
fn fill<'a>(list: &mut Vec<Pair>, items: impl Iterator<Item = (&'a str, &'a [u8])>) {
    let mut n = 0;
    for (name, value) in items {
        if n == list.len() {
            let spare = SPARE.with(|s| s.borrow_mut().pairs.pop());
            list.push(spare.unwrap_or_default());
        }
        let (k, v) = &mut list[n];
        k.clear();
        k.push_str(name);
        v.clear();
        match std::str::from_utf8(value) {
            Ok(text) => v.push_str(text),
            Err(_) => v.push_str(&String::from_utf8_lossy(value)),
        }
        n += 1;
    }
    if list.len() > n {
        SPARE.with(|s| {
            let pairs = &mut s.borrow_mut().pairs;
            for pair in list.drain(n..) {
                if pairs.len() < SPARE_PAIRS && capacity(&pair) <= SPARE_PAIR_BYTES {
                    pairs.push(pair);
                }
            }
        });
    }
}

/// The request's headers as the ABI sees them.
pub fn request_pairs(req: &RequestHeader, scheme: &str) -> Vec<(String, String)> {
    let host = req.headers.get(http::header::HOST);
    let authority = match host.filter(|h| h.to_str().is_ok()) {
        Some(host) => host.as_bytes(),
        None => req.uri.authority().map_or("", |a| a.as_str()).as_bytes(),
    };
    let pseudo = [
        (":method", req.method.as_str().as_bytes()),
        (
            ":path",
            req.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        ),
        (":authority", authority),
        (":scheme", scheme.as_bytes()),
    ];
    // `host` travels as `:authority`, as in HTTP/2.
    let fields = req
        .headers
        .iter()
        .filter(|(n, _)| *n != http::header::HOST)
        .map(|(n, v)| (n.as_str(), v.as_bytes()));
    let mut pairs = spare_list();
    fill(&mut pairs, pseudo.into_iter().chain(fields));
    pairs
}

/// The names whose values differ between two header lists (pseudo-headers
/// included), so only those are rewritten.
fn changed_names<'a>(before: &'a [Pair], after: &'a [Pair]) -> SmallVec<[&'a str; 4]> {
    // No allocation per name, nor for the few names a plugin changes: the two
    // lists' values for a name are compared in place.
    fn values<'a>(list: &'a [Pair], name: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        list.iter().filter(move |(n, _)| n == name).map(|(_, v)| v)
    }
    let mut names: SmallVec<[&str; 4]> = SmallVec::new();
    // The usual change: headers appended, nothing else touched.
    if after.len() > before.len() && after[..before.len()] == *before {
        for (n, _) in &after[before.len()..] {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        return names;
    }
    for (n, _) in before.iter().chain(after.iter()) {
        if !names.contains(&n.as_str()) && !values(before, n).eq(values(after, n)) {
            names.push(n);
        }
    }
    names
}

/// Write only what a plugin changed back into the request.
pub fn apply_request_changes(
    req: &mut RequestHeader,
    before: &[(String, String)],
    after: &[(String, String)],
) -> pingora::Result<()> {
    if before == after {
        return Ok(());
    }
    let changed = changed_names(before, after);
    if changed.iter().any(|n| n.starts_with(':') || *n == "host") {
        return apply_request(req, after.to_vec());
    }
    for name in &changed {
        req.remove_header(*name);
    }
    for (name, value) in after.iter().filter(|(n, _)| changed.contains(&n.as_str())) {
        req.append_header(name.clone(), value.as_str())?;
    }
    Ok(())
}

/// Write only what a plugin changed back into the response.
pub fn apply_response_changes(
    resp: &mut ResponseHeader,
    before: &[(String, String)],
    after: &[(String, String)],
) -> pingora::Result<()> {
    if before == after {
        return Ok(());
    }
    let changed = changed_names(before, after);
    if changed.iter().any(|n| n.starts_with(':')) {
        return apply_response(resp, after.to_vec());
    }
    for name in &changed {
        resp.remove_header(*name);
    }
    for (name, value) in after.iter().filter(|(n, _)| changed.contains(&n.as_str())) {
        resp.append_header(name.clone(), value.as_str())?;
    }
    Ok(())
}

/// Write a plugin's header list back into the request.
pub fn apply_request(req: &mut RequestHeader, pairs: Vec<(String, String)>) -> pingora::Result<()> {
    let invalid = |what: String| pingora::Error::explain(pingora::ErrorType::InternalError, what);
    let names: Vec<http::HeaderName> = req.headers.keys().cloned().collect();
    for name in names {
        req.remove_header(&name);
    }
    for (name, value) in pairs {
        match name.as_str() {
            ":method" => {
                let m = http::Method::from_bytes(value.as_bytes())
                    .map_err(|_| invalid(format!("plugin set :method to `{value}`")))?;
                req.set_method(m);
            }
            ":path" => {
                let uri = value
                    .parse()
                    .map_err(|_| invalid(format!("plugin set :path to `{value}`")))?;
                req.set_uri(uri);
            }
            ":authority" | "host" => {
                if !value.is_empty() {
                    req.insert_header(http::header::HOST, value)?;
                }
            }
            n if n.starts_with(':') => {}
            _ => {
                req.append_header(name, value)?;
            }
        }
    }
    Ok(())
}

/// The response's headers as the ABI sees them.
pub fn response_pairs(resp: &ResponseHeader) -> Vec<(String, String)> {
    let status = [(":status", resp.status.as_str().as_bytes())];
    let fields = resp.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    let mut pairs = spare_list();
    fill(&mut pairs, status.into_iter().chain(fields));
    pairs
}

/// Write a plugin's header list back into the response.
pub fn apply_response(
    resp: &mut ResponseHeader,
    pairs: Vec<(String, String)>,
) -> pingora::Result<()> {
    let names: Vec<http::HeaderName> = resp.headers.keys().cloned().collect();
    for name in names {
        resp.remove_header(&name);
    }
    for (name, value) in pairs {
        if name == ":status" {
            if let Ok(code) = value.parse::<u16>() {
                resp.set_status(code)?;
            }
        } else if !name.starts_with(':') {
            resp.append_header(name, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_request_is_seen_with_its_pseudo_headers_and_host_as_authority() {
        let mut req = RequestHeader::build("POST", b"/a/b?c=d", None).unwrap();
        req.insert_header("host", "example.test").unwrap();
        req.insert_header("x-one", "1").unwrap();
        req.append_header("x-two", b"caf\xc3\xa9 \xff".as_slice())
            .unwrap();
        let expected = list(&[
            (":method", "POST"),
            (":path", "/a/b?c=d"),
            (":authority", "example.test"),
            (":scheme", "https"),
            ("x-one", "1"),
            ("x-two", "café \u{fffd}"),
        ]);
        assert_eq!(request_pairs(&req, "https"), expected);
    }

    #[test]
    fn a_recycled_list_keeps_nothing_of_its_last_request() {
        let mut long = ResponseHeader::build(404, None).unwrap();
        for i in 0..6 {
            long.append_header(format!("x-{i}"), "a long value, longer than the next")
                .unwrap();
        }
        let first = response_pairs(&long);
        assert_eq!(first.len(), 7);
        recycle(first);
        let mut short = ResponseHeader::build(200, None).unwrap();
        short.insert_header("content-type", "text/plain").unwrap();
        let second = response_pairs(&short);
        let capacity = second.capacity();
        assert_eq!(
            second,
            list(&[(":status", "200"), ("content-type", "text/plain")])
        );
        assert!(capacity >= 7, "the recycled list was reused ({capacity})");
    }

    #[test]
    fn a_list_holding_large_headers_is_not_kept() {
        let mut large = ResponseHeader::build(200, None).unwrap();
        large
            .insert_header("set-cookie", "x".repeat(SPARE_LIST_BYTES))
            .unwrap();
        recycle(response_pairs(&large));
        let next = response_pairs(&ResponseHeader::build(204, None).unwrap());
        let kept: usize = next.iter().map(|(k, v)| k.capacity() + v.capacity()).sum();
        assert!(kept < SPARE_LIST_BYTES, "{kept} bytes came back");
    }

    #[test]
    fn headers_cut_from_a_shorter_list_fill_the_next_longer_one() {
        let with_values = |value: &str| {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            for i in 0..6 {
                resp.append_header(format!("x-{i}"), value).unwrap();
            }
            resp
        };
        recycle(response_pairs(&with_values(&"v".repeat(100))));
        // The same list refilled with `:status` alone: six headers are cut...
        let short = response_pairs(&ResponseHeader::build(204, None).unwrap());
        assert_eq!(short.len(), 1);
        // ...and a second list (the first is still in use) takes their
        // buffers: one-byte values in strings that held a hundred.
        let again = response_pairs(&with_values("v"));
        let roomy = again.iter().filter(|(_, v)| v.capacity() >= 100).count();
        assert_eq!(roomy, 6, "the cut headers' buffers were reused");
    }

    #[test]
    fn lists_are_kept_for_as_many_requests_in_flight_as_spare_lists() {
        let resp = ResponseHeader::build(200, None).unwrap();
        let held: Vec<_> = (0..SPARE_LISTS).map(|_| response_pairs(&resp)).collect();
        let addresses: Vec<_> = held.iter().map(|l| l.as_ptr()).collect();
        held.into_iter().for_each(recycle);
        let again: Vec<_> = (0..SPARE_LISTS).map(|_| response_pairs(&resp)).collect();
        for list in &again {
            assert!(
                addresses.contains(&list.as_ptr()),
                "a new list, not a kept one"
            );
        }
    }
}

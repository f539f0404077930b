//! Tests of the SSE decoder and encoder: events split anywhere, every line end, size limits.

use super::*;

/// Every event (or refusal) the pieces yield, fed one after the other.
fn decode(limit: usize, pieces: &[&[u8]]) -> Vec<Result<Event, TooLarge>> {
    let mut decoder = Decoder::new(limit);
    let mut out = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        while let Some(decoded) = decoder.next_event(&mut rest) {
            out.push(decoded);
        }
        assert!(rest.is_empty(), "a piece is read to its end");
    }
    out
}

fn data(decoded: &[Result<Event, TooLarge>]) -> Vec<&str> {
    decoded
        .iter()
        .map(|d| d.as_ref().unwrap().data.as_deref().unwrap_or("<none>"))
        .collect()
}

/// `bytes` cut at every position into two pieces, each decoding like the whole.
fn same_at_every_cut(bytes: &[u8]) -> Vec<Result<Event, TooLarge>> {
    let whole = decode(1024, &[bytes]);
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(decode(1024, &[a, b]), whole, "cut at {cut}");
    }
    whole
}

#[test]
fn lf_ends_lines_and_a_blank_line_ends_the_event() {
    let out = same_at_every_cut(b"data: one\n\ndata: two\n\n");
    assert_eq!(data(&out), ["one", "two"]);
}

#[test]
fn crlf_ends_lines() {
    let out = same_at_every_cut(b"event: note\r\ndata: one\r\n\r\ndata: two\r\n\r\n");
    assert_eq!(data(&out), ["one", "two"]);
    assert_eq!(out[0].as_ref().unwrap().event_type(), "note");
}

#[test]
fn cr_alone_ends_lines() {
    let out = same_at_every_cut(b"data: one\r\rdata: two\r\r");
    assert_eq!(data(&out), ["one", "two"]);
}

#[test]
fn cr_and_lf_in_two_pieces_are_one_line_end() {
    // Were the LF a line end of its own, the first piece would end the event early and the
    // `id` would land in a second block.
    let out = decode(1024, &[b"data: x\r", b"\nid: 7\r", b"\n\r", b"\n"]);
    assert_eq!(out.len(), 1);
    let event = out[0].as_ref().unwrap();
    assert_eq!(event.data.as_deref(), Some("x"));
    assert_eq!(event.id.as_deref(), Some("7"));
}

#[test]
fn a_character_cut_between_pieces_arrives_whole() {
    let bytes = "data: {\"text\":\"café crème\"}\r\n\r\n".as_bytes();
    let at = bytes.iter().position(|&b| b == 0xC3).unwrap() + 1;
    let out = decode(1024, &[&bytes[..at], &bytes[at..]]);
    assert_eq!(data(&out), ["{\"text\":\"café crème\"}"]);
}

#[test]
fn data_lines_are_joined_with_line_feeds() {
    let out = same_at_every_cut(b"data: {\ndata:  \"a\": 1\ndata\ndata: }\n\n");
    assert_eq!(data(&out), ["{\n \"a\": 1\n\n}"]);
}

#[test]
fn comments_are_kept_apart_and_dispatch_nothing() {
    let out = same_at_every_cut(b": keep-alive\n\n:\n: x\ndata: d\n\n");
    let first = out[0].as_ref().unwrap();
    assert_eq!(first.comments, ["keep-alive"]);
    assert!(!first.is_dispatched());
    let second = out[1].as_ref().unwrap();
    assert_eq!(second.comments, ["", "x"]);
    assert_eq!(second.data.as_deref(), Some("d"));
}

#[test]
fn fields_follow_the_standard() {
    let out = same_at_every_cut(
        b"id: 1\nretry: 2500\nevent:\nunknown: x\ndata\n\nid: a\0b\nretry: 1s\ndata:  two\n\n",
    );
    let first = out[0].as_ref().unwrap();
    assert_eq!(first.id.as_deref(), Some("1"));
    assert_eq!(first.retry, Some(2500));
    assert_eq!(first.event_type(), "message", "an empty type is a message");
    assert_eq!(
        first.data.as_deref(),
        Some(""),
        "a bare `data` line is empty data"
    );
    let second = out[1].as_ref().unwrap();
    assert_eq!(second.id, None, "an id with NUL is ignored");
    assert_eq!(second.retry, None, "a retry that is not digits is ignored");
    assert_eq!(
        second.data.as_deref(),
        Some(" two"),
        "one space is taken off"
    );
}

#[test]
fn a_leading_byte_order_mark_is_skipped_once() {
    let out = same_at_every_cut(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n");
    // Later on, the same bytes are the start of a field name nobody knows.
    assert_eq!(data(&out), ["a", "<none>"]);
}

#[test]
fn blank_lines_alone_yield_nothing() {
    assert!(decode(1024, &[b"\n\r\n\r\n\n"]).is_empty());
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    let out = decode(1024, &[b"data: a\xFFb\n\n"]);
    assert_eq!(data(&out), ["a\u{FFFD}b"]);
}

#[test]
fn an_event_over_the_limit_is_refused_and_skipped() {
    let big = format!("data: {}\n", "x".repeat(100));
    let stream = format!("data: small\n\n{big}{big}\ndata: after\n\n");
    let out = decode(64, &[stream.as_bytes()]);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0].as_ref().unwrap().data.as_deref(), Some("small"));
    let refused = out[1].as_ref().unwrap_err();
    assert_eq!(refused.limit, 64);
    assert!(refused.head.starts_with("data: xxx"), "{refused:?}");
    assert_eq!(out[2].as_ref().unwrap().data.as_deref(), Some("after"));
}

#[test]
fn an_endless_line_is_refused_without_being_kept() {
    let mut decoder = Decoder::new(64);
    let mut first = &[b'x'; 100][..];
    assert!(decoder.next_event(&mut first).unwrap().is_err());
    for _ in 0..100 {
        let mut more = &[b'x'; 1000][..];
        assert!(decoder.next_event(&mut more).is_none());
    }
    assert!(decoder.line.is_empty() && decoder.line.capacity() == 0);
    let mut end = &b"\n\ndata: next\n\n"[..];
    let next = decoder.next_event(&mut end).unwrap().unwrap();
    assert_eq!(next.data.as_deref(), Some("next"));
}

#[test]
fn the_decoder_knows_where_an_event_is_left_off() {
    let mut decoder = Decoder::new(1024);
    assert!(decoder.at_boundary());
    let mut part = &b"data: {\"id\""[..];
    assert!(decoder.next_event(&mut part).is_none());
    assert!(decoder.mid_line() && !decoder.at_boundary());
    let mut line_end = &b"\r"[..];
    assert!(decoder.next_event(&mut line_end).is_none());
    assert!(!decoder.mid_line() && !decoder.at_boundary());
    let mut blank = &b"\r\n"[..];
    assert!(decoder.next_event(&mut blank).is_some());
    assert!(decoder.at_boundary());
}

#[test]
fn encoding_writes_one_line_per_field_and_data_line() {
    let event = Event {
        event: Some("note".into()),
        data: Some("{\r\n\"a\": 1\r}".into()),
        id: Some("7\nretry: 1".into()),
        retry: Some(10),
        comments: vec!["hi".into()],
    };
    assert_eq!(
        event.encode(),
        ": hi\nevent: note\nid: 7retry: 1\nretry: 10\ndata: {\ndata: \"a\": 1\ndata: }\n\n"
    );
    assert_eq!(Event::message("").encode(), "data:\n\n");
    assert_eq!(Event::comment("keep-alive").encode(), ": keep-alive\n\n");
}

#[test]
fn an_encoded_event_decodes_to_itself() {
    let event = Event {
        event: Some("message".into()),
        data: Some("line one\n line two\n".into()),
        id: Some(" spaced".into()),
        retry: None,
        comments: vec!["c".into()],
    };
    let out = decode(1024, &[event.encode().as_bytes()]);
    assert_eq!(out, [Ok(event)]);
}

#[test]
fn boundary_follows_line_ends_of_every_kind_across_pieces() {
    let mut b = Boundary::default();
    assert!(b.at_boundary());
    for (piece, between) in [
        (&b"data: x"[..], false),
        (b"\r", false),
        (b"\n", false),
        (b"\r", true),
        (b"\n", true),
        (b"data: y\n\n", true),
        (b": c\r\n", false),
        (b"\r\n", true),
    ] {
        b.feed(piece);
        assert_eq!(b.at_boundary(), between, "after {piece:?}");
    }
}

//! Server-sent events, framed as the WHATWG HTML standard's event stream parser frames them.
//!
//! - [`Decoder`] takes the bytes of a stream in whatever pieces the network delivers and yields
//!   each event once its blank line has arrived. Lines end with LF, CRLF or CR — a CR that ends
//!   one piece and an LF that starts the next are one line end. UTF-8 is decoded once per
//!   complete event, so a character cut between two pieces arrives whole. An event larger than
//!   the decoder's limit is refused ([`TooLarge`]) and skipped, so a stream cannot make it hold
//!   more than that.
//! - [`Event::encode`] writes an event; everything the gateway sends as SSE is written by it.
//! - [`Boundary`] follows a stream that is relayed as it is, keeping nothing, to tell whether
//!   it is between two events (where a comment may be slipped in).

/// The UTF-8 byte order mark, skipped at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One event, or a block of fields that is not dispatched as one (comments only, an `id`
/// alone): a relay passes those on too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `event` field, as sent; see [`Event::event_type`].
    pub event: Option<String>,
    /// The `data` lines, joined with `\n`; `None` when the block has none.
    pub data: Option<String>,
    /// The `id` field of this block (an id containing NUL is ignored, as the standard says).
    pub id: Option<String>,
    /// The `retry` field, when it is a number of milliseconds.
    pub retry: Option<u64>,
    /// Comment lines, without the `:` and the one space after it.
    pub comments: Vec<String>,
}

impl Event {
    /// A `message` event carrying `data`.
    pub fn message(data: impl Into<String>) -> Self {
        Self {
            data: Some(data.into()),
            ..Self::default()
        }
    }

    /// A block holding one comment (a keep-alive).
    pub fn comment(text: impl Into<String>) -> Self {
        Self {
            comments: vec![text.into()],
            ..Self::default()
        }
    }

    /// The event's type: `message` unless its `event` field names another.
    pub fn event_type(&self) -> &str {
        match self.event.as_deref() {
            Some(t) if !t.is_empty() => t,
            _ => "message",
        }
    }

    /// Whether a client dispatches it: it has data. A block of comments, an `id` or a `retry`
    /// alone is not dispatched (its `id` still becomes the stream's last event id).
    pub fn is_dispatched(&self) -> bool {
        self.data.is_some()
    }

    /// The event in the wire format, ending with its blank line: comments, `event`, `id`,
    /// `retry`, then one `data` line per line of data. A line break in the type, the id or a
    /// comment is dropped, so no value can start a field of its own.
    pub fn encode(&self) -> String {
        let size = self.data.as_ref().map_or(0, String::len) + 32;
        let mut out = String::with_capacity(size);
        for comment in &self.comments {
            single_line(&mut out, ":", comment);
        }
        if let Some(event) = &self.event {
            single_line(&mut out, "event:", event);
        }
        if let Some(id) = &self.id {
            single_line(&mut out, "id:", id);
        }
        if let Some(retry) = self.retry {
            single_line(&mut out, "retry:", &retry.to_string());
        }
        if let Some(data) = &self.data {
            for line in lines(data) {
                single_line(&mut out, "data:", line);
            }
        }
        out.push('\n');
        out
    }
}

/// `{field} {value}\n`, without the space for an empty value and without line breaks.
fn single_line(out: &mut String, field: &str, value: &str) {
    out.push_str(field);
    if !value.is_empty() {
        out.push(' ');
        out.extend(value.chars().filter(|c| !matches!(c, '\r' | '\n')));
    }
    out.push('\n');
}

/// The lines of `text`, split at LF, CRLF and CR.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n']) {
            Some(i) => {
                let end = if text[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&text[i + end..]);
                Some(&text[..i])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// An event larger than the decoder's limit: refused, and the rest of it skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an event larger than {limit} bytes")]
pub struct TooLarge {
    pub limit: usize,
    /// What was kept of it (its data so far, then the start of the line being read), for a
    /// guess at what it was.
    pub head: String,
}

/// Takes the next piece of a line from `input` (which must not be empty): the bytes up to a
/// line end, which is consumed, or to the end of the input. `true` when the line ended. An LF
/// right after a CR that ended the previous line — in this input or the previous one — is
/// part of that line end.
fn take_line<'a>(after_cr: &mut bool, input: &mut &'a [u8]) -> (&'a [u8], usize, bool) {
    let mut skipped = 0;
    if std::mem::take(after_cr) && input.first() == Some(&b'\n') {
        *input = &input[1..];
        skipped = 1;
    }
    match memchr::memchr2(b'\n', b'\r', input) {
        Some(i) => {
            let line = &input[..i];
            *after_cr = input[i] == b'\r';
            *input = &input[i + 1..];
            (line, skipped + i + 1, true)
        }
        None => {
            let line = *input;
            *input = &[];
            (line, skipped + line.len(), false)
        }
    }
}

/// The fields of the block being read, as bytes until it is complete.
#[derive(Debug, Default)]
struct Block {
    /// Whether any non-blank line was read.
    open: bool,
    event: Option<Vec<u8>>,
    data: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    retry: Option<u64>,
    comments: Vec<Vec<u8>>,
}

impl Block {
    fn field(&mut self, line: &[u8]) {
        self.open = true;
        if let Some(comment) = line.strip_prefix(b":") {
            self.comments.push(one_space_off(comment).to_vec());
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], one_space_off(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        match name {
            b"event" => self.event = Some(value.to_vec()),
            b"data" => match &mut self.data {
                Some(data) => {
                    data.push(b'\n');
                    data.extend_from_slice(value);
                }
                None => self.data = Some(value.to_vec()),
            },
            b"id" if !value.contains(&0) => self.id = Some(value.to_vec()),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }

    fn into_event(self) -> Event {
        Event {
            event: self.event.map(text),
            data: self.data.map(text),
            id: self.id.map(text),
            retry: self.retry,
            comments: self.comments.into_iter().map(text).collect(),
        }
    }
}

fn one_space_off(value: &[u8]) -> &[u8] {
    value.strip_prefix(b" ").unwrap_or(value)
}

/// UTF-8, with U+FFFD for what is not (as the standard decodes an event stream).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Turns the bytes of an event stream, in pieces cut anywhere, into whole events.
///
/// ```
/// use keygate_core::wire::sse::Decoder;
/// let mut decoder = Decoder::new(1024);
/// let (mut first, mut second) = (&b"data: caf\xC3"[..], &b"\xA9\r\n\r\n"[..]);
/// assert!(decoder.next_event(&mut first).is_none());
/// let event = decoder.next_event(&mut second).unwrap().unwrap();
/// assert_eq!(event.data.as_deref(), Some("café"));
/// ```
#[derive(Debug)]
pub struct Decoder {
    limit: usize,
    after_cr: bool,
    /// Whether the first line has ended (the BOM is looked for there).
    started: bool,
    /// The line being read (while the block is within the limit).
    line: Vec<u8>,
    line_len: usize,
    block: Block,
    /// Bytes of the current block so far, line ends included.
    size: usize,
    /// The current block outgrew the limit: read to its end, keeping nothing.
    skipping: bool,
}

impl Decoder {
    /// A decoder that refuses events larger than `limit` bytes (fields, comments and line ends
    /// counted as sent).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            after_cr: false,
            started: false,
            line: Vec::new(),
            line_len: 0,
            block: Block::default(),
            size: 0,
            skipping: false,
        }
    }

    /// Reads from `input` until an event is complete and returns it, leaving in `input` what
    /// follows it; `None` once `input` is used up without completing one (what was read waits
    /// for the next piece). A block that grows past the limit is returned as [`TooLarge`] the
    /// moment it does, then skipped to its end.
    pub fn next_event(&mut self, input: &mut &[u8]) -> Option<Result<Event, TooLarge>> {
        while !input.is_empty() {
            let (piece, consumed, ended) = take_line(&mut self.after_cr, input);
            self.size += consumed;
            self.line_len += piece.len();
            let mut refused = None;
            if !self.skipping {
                if self.size > self.limit {
                    refused = Some(self.refuse(piece));
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            let event = if ended { self.line_ended() } else { None };
            if let Some(refused) = refused {
                return Some(Err(refused));
            }
            if let Some(event) = event {
                return Some(Ok(event));
            }
        }
        None
    }

    /// Whether the stream is between two events: no line or block begun.
    pub fn at_boundary(&self) -> bool {
        self.line_len == 0 && !self.block.open && !self.skipping
    }

    /// Whether a line is begun and not yet ended.
    pub fn mid_line(&self) -> bool {
        self.line_len > 0
    }

    /// Gives up the current block: what was kept of it, and from now on skip to its end.
    fn refuse(&mut self, piece: &[u8]) -> TooLarge {
        self.skipping = true;
        let block = std::mem::take(&mut self.block);
        let mut head = block.data.unwrap_or_default();
        let mut line = std::mem::take(&mut self.line);
        line.extend_from_slice(piece);
        if !head.is_empty() && !line.is_empty() {
            head.push(b'\n');
        }
        head.extend_from_slice(&line[..line.len().min(self.limit.saturating_sub(head.len()))]);
        TooLarge {
            limit: self.limit,
            head: text(head),
        }
    }

    fn line_ended(&mut self) -> Option<Event> {
        let mut line = std::mem::take(&mut self.line);
        if !std::mem::replace(&mut self.started, true) && line.starts_with(BOM) {
            line.drain(..BOM.len());
            self.line_len -= BOM.len();
        }
        let blank = self.line_len == 0;
        self.line_len = 0;
        if !blank {
            if !self.skipping {
                self.block.field(&line);
            }
            return None;
        }
        self.size = 0;
        let block = std::mem::take(&mut self.block);
        if std::mem::replace(&mut self.skipping, false) || !block.open {
            return None;
        }
        Some(block.into_event())
    }
}

/// Where a relayed stream is between events, keeping none of it.
#[derive(Debug, Default)]
pub struct Boundary {
    after_cr: bool,
    mid_line: bool,
    open: bool,
}

impl Boundary {
    /// Follows the next piece of the stream.
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            let (piece, _, ended) = take_line(&mut self.after_cr, &mut input);
            self.mid_line |= !piece.is_empty();
            if ended {
                self.open = self.mid_line;
                self.mid_line = false;
            }
        }
    }

    /// Whether the stream is between two events.
    pub fn at_boundary(&self) -> bool {
        !self.mid_line && !self.open
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;

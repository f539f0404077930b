//! The redaction behind [`super::Capture`]: the injected credentials wherever they appear,
//! values under secret-named keys, secret-shaped text (every shape in one automaton, compiled
//! once per process), and JSON text inside strings redacted as JSON.
//!
//! Cost: one pass of the automaton over each string of a payload (plus a parse of each string
//! that holds JSON text, at most [`NESTING`] levels deep), and a substring search per injected
//! credential; payloads are bounded by `traces.max_payload_bytes`.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::{Map, Value};

use super::MASK;

/// How many levels of JSON text inside a string are parsed and redacted as JSON (an MCP tool
/// result's text holding JSON is one level).
pub(super) const NESTING: u8 = 2;

/// Credentials shorter than this are masked only where a whole value equals them: searching
/// for them inside text would mask ordinary words.
const MIN_SUBSTRING: usize = 4;

/// Folded key names ([`fold_key`]) whose values are secret: containing one of these…
const KEY_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "apikey",
    "privatekey",
    "credential",
];
/// …ending with one of these…
const KEY_SUFFIXES: &[&str] = &["token", "authorization", "cookie", "cookies", "accesskey"];
/// …or exactly one of these…
const KEY_EXACT: &[&str] = &["auth", "pwd", "pass", "jwt", "bearer", "otp"];
/// …except these, which name no secret (MCP's progress token, pagination tokens).
const KEY_EXEMPT: &[&str] = &["progresstoken", "nexttoken", "pagetoken", "nextpagetoken"];

/// One secret shape. Named groups: `pre` and `post` are kept around the mask, `secret` (or
/// the whole match) is what `check` judges and what is masked.
struct Rule {
    pattern: &'static str,
    check: Option<fn(&str) -> bool>,
}

/// Every shape, in the order that breaks ties between shapes matching at the same place.
const RULES: &[Rule] = &[
    // PEM private keys, to the end of the text when cut short.
    Rule::new(r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z ]*PRIVATE KEY-----|\z)"),
    // A password in a URL: scheme://user:password@host.
    Rule::new(
        r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:)(?P<secret>[^\s/?#@]+)(?P<post>@)",
    ),
    // `Cookie:` and `Set-Cookie:` headers: the whole value.
    Rule::new(r#"(?i)(?P<pre>\b(?:set-)?cookie[ \t]*:[ \t]*)(?P<secret>[^\r\n"]+)"#),
    // `name: value` / `name=value` with a secret name: `Authorization: Bearer …`,
    // `"apiKey": "…"`, `client_secret=…`, `AWS_SECRET_ACCESS_KEY=…`.
    Rule::checked(
        concat!(
            r"(?i)(?P<pre>[A-Za-z0-9_.-]*(?:api[-_]?keys?|access[-_]?keys?|secret[-_]?keys?|",
            r"(?:access|refresh|id|auth|session|bearer|api|csrf|private)[-_]?tokens?|",
            r"client[-_]?secrets?|private[-_]?keys?|passwords?|passwd|passphrase|authorization)",
            r#"["']?[ \t]*[:=][ \t]*["']?(?:(?:bearer|basic|token)[ \t]+)?)"#,
            r#"(?P<secret>[^\s"',;&<>{}\[\]]+)"#,
        ),
        not_a_scheme,
    ),
    // The same with a generic name (`token`, `secret`, `auth`), when the value looks random:
    // "token: 5" stays.
    Rule::checked(
        concat!(
            r#"(?i)(?P<pre>[A-Za-z0-9_.-]*(?:token|secret|auth)["']?[ \t]*[:=][ \t]*["']?"#,
            r"(?:(?:bearer|basic|token)[ \t]+)?)",
            r#"(?P<secret>[^\s"',;&<>{}\[\]]+)"#,
        ),
        looks_random,
    ),
    // `Bearer …` and `Basic …` anywhere, when what follows looks random: "Basic information"
    // stays.
    Rule::checked(
        r"(?i)(?P<pre>\b(?:bearer|basic)[ \t]+)(?P<secret>[A-Za-z0-9._~+/-]*[A-Za-z0-9_~+/-]=*)",
        looks_random,
    ),
    // Query and fragment parameters that carry credentials.
    Rule::new(
        r#"(?i)(?P<pre>[?&#;](?:key|sig|signature|code|token|access_token)=)(?P<secret>[^&\s#"'<>]+)"#,
    ),
    // JWTs: three base64url parts, the first a JSON object.
    Rule::new(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    // GitHub.
    Rule::new(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    // Slack.
    Rule::new(r"\b(?:xox[abposr]|xapp)-[A-Za-z0-9-]{10,}"),
    // OpenAI, Anthropic and other `sk-…` keys.
    Rule::new(r"\bsk-[A-Za-z0-9_-]{16,}"),
    // Stripe.
    Rule::new(r"\b(?:[sr]k_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{16,})"),
    // AWS access key ids.
    Rule::new(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}\b"),
    // Google API keys and OAuth access tokens.
    Rule::new(r"\b(?:AIza[A-Za-z0-9_-]{35}|ya29\.[A-Za-z0-9_-]{20,})"),
    // GitLab, npm, Hugging Face.
    Rule::new(r"\b(?:glpat-[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{36}|hf_[A-Za-z0-9]{30,})"),
];

static SHAPES: LazyLock<Shapes> = LazyLock::new(Shapes::build);

/// What one redaction masks.
pub(super) struct Redactor<'a> {
    /// `traces.redact_fields`, folded.
    pub fields: &'a [String],
    /// The injected credentials ([`super::Injected::secrets`]), masked always.
    pub secrets: &'a [String],
    /// Whether secret-named keys and secret shapes are masked too.
    pub redact: bool,
}

/// [`RULES`] compiled into one regex, and where each rule's groups are in it.
struct Shapes {
    regex: Regex,
    groups: Vec<Groups>,
}

struct Groups {
    whole: usize,
    pre: Option<usize>,
    secret: Option<usize>,
    post: Option<usize>,
    check: Option<fn(&str) -> bool>,
}

impl Rule {
    /// A shape always masked.
    const fn new(pattern: &'static str) -> Self {
        Self {
            pattern,
            check: None,
        }
    }

    /// A shape masked when `check` says its secret part is one.
    const fn checked(pattern: &'static str, check: fn(&str) -> bool) -> Self {
        Self {
            pattern,
            check: Some(check),
        }
    }
}

impl Redactor<'_> {
    /// Redacts `value` in place; whether anything changed.
    pub fn value(&self, value: &mut Value, nesting: u8) -> bool {
        match value {
            Value::Object(map) => self.object(map, nesting),
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.value(v, nesting) | changed),
            Value::String(s) => match self.text(s, nesting) {
                Some(redacted) => {
                    *s = redacted;
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    fn object(&self, map: &mut Map<String, Value>, nesting: u8) -> bool {
        let (mut changed, mut renamed) = (false, false);
        for (key, v) in map.iter_mut() {
            changed |= if self.redact && self.secret_key(key) {
                mask(v)
            } else {
                self.value(v, nesting)
            };
            renamed |= self.text(key, 0).is_some();
        }
        if renamed {
            for (key, v) in std::mem::take(map) {
                let mut key = self.text(&key, 0).unwrap_or(key);
                while map.contains_key(&key) {
                    key.push('\'');
                }
                map.insert(key, v);
            }
        }
        changed | renamed
    }

    /// `text` redacted, or `None` when nothing in it is secret.
    pub fn text(&self, text: &str, nesting: u8) -> Option<String> {
        let masked = self.mask_secrets(text);
        if !self.redact {
            return masked;
        }
        let current = masked.as_deref().unwrap_or(text);
        let redacted = match json_in(current, nesting) {
            Some(mut json) => self.value(&mut json, nesting - 1).then(|| json.to_string()),
            None => match SHAPES.redact(current) {
                Cow::Owned(s) => Some(s),
                Cow::Borrowed(_) => None,
            },
        };
        redacted.or(masked)
    }

    /// `text` with every injected credential masked, or `None` when it holds none.
    fn mask_secrets(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for secret in self.secrets {
            let current = out.as_deref().unwrap_or(text);
            if secret.len() >= MIN_SUBSTRING {
                if current.contains(secret.as_str()) {
                    out = Some(current.replace(secret.as_str(), MASK));
                }
            } else if current == secret {
                out = Some(MASK.to_owned());
            }
        }
        out
    }

    fn secret_key(&self, key: &str) -> bool {
        let folded = fold_key(key);
        self.fields.contains(&folded) || secret_name(&folded)
    }
}

impl Shapes {
    fn build() -> Self {
        let alternatives: Vec<String> = RULES
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                // ASCII word boundaries: a Unicode one would stop the fast engine at the
                // first non-ASCII byte.
                let pattern = ["pre", "secret", "post"]
                    .iter()
                    .fold(rule.pattern.replace(r"\b", r"(?-u:\b)"), |p, name| {
                        p.replace(&format!("(?P<{name}>"), &format!("(?P<{name}{i}>"))
                    });
                format!("(?P<r{i}>{pattern})")
            })
            .collect();
        let regex = Regex::new(&alternatives.join("|")).expect("the secret shapes compile");
        let index = |name: String| regex.capture_names().position(|n| n == Some(name.as_str()));
        let groups = RULES
            .iter()
            .enumerate()
            .map(|(i, rule)| Groups {
                whole: index(format!("r{i}")).expect("every rule is a group"),
                pre: index(format!("pre{i}")),
                secret: index(format!("secret{i}")),
                post: index(format!("post{i}")),
                check: rule.check,
            })
            .collect();
        Self { regex, groups }
    }

    fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.regex
            .replace_all(text, |caps: &Captures| self.replacement(caps))
    }

    /// What replaces one match: the rule's kept groups around the mask, or the match itself
    /// when the rule's check finds it is no secret.
    fn replacement(&self, caps: &Captures) -> String {
        let whole = &caps[0];
        let Some(g) = self.groups.iter().find(|g| caps.get(g.whole).is_some()) else {
            return whole.to_owned();
        };
        let group = |i: Option<usize>| i.and_then(|i| caps.get(i)).map(|m| m.as_str());
        if let Some(check) = g.check
            && !check(group(g.secret).unwrap_or(whole))
        {
            return whole.to_owned();
        }
        let (pre, post) = (group(g.pre).unwrap_or(""), group(g.post).unwrap_or(""));
        format!("{pre}{MASK}{post}")
    }
}

/// A key as compared with the secret names: lower case, letters and digits only
/// (`X-Api-Key`, `api_key` and `apiKey` are all `apikey`).
pub(super) fn fold_key(key: &str) -> String {
    key.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn secret_name(folded: &str) -> bool {
    !KEY_EXEMPT.contains(&folded)
        && (KEY_EXACT.contains(&folded)
            || KEY_PARTS.iter().any(|p| folded.contains(p))
            || KEY_SUFFIXES.iter().any(|s| folded.ends_with(s)))
}

/// Masks a value under a secret key; `null` and booleans tell nothing and stay.
fn mask(value: &mut Value) -> bool {
    match value {
        Value::Null | Value::Bool(_) => false,
        Value::String(s) if s == MASK => false,
        _ => {
            *value = Value::from(MASK);
            true
        }
    }
}

/// The JSON object or array `text` holds, if it holds one and nesting allows parsing it.
fn json_in(text: &str, nesting: u8) -> Option<Value> {
    let t = text.trim();
    let framed =
        (t.starts_with('{') && t.ends_with('}')) || (t.starts_with('[') && t.ends_with(']'));
    if nesting == 0 || !framed {
        return None;
    }
    serde_json::from_str::<Value>(t).ok()
}

/// Whether a value after a secret name or an auth scheme looks like a credential rather than
/// a word: long, or with a digit, a symbol or an inner capital.
fn looks_random(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 24
        || (b.len() >= 6
            && (b.iter().any(u8::is_ascii_digit)
                || b.iter().any(|c| b"-._~+/=".contains(c))
                || b.iter().skip(1).any(u8::is_ascii_uppercase)))
}

/// Not a bare auth scheme (what is left when the credential after it was masked already).
fn not_a_scheme(s: &str) -> bool {
    !["bearer", "basic", "token"]
        .iter()
        .any(|scheme| s.eq_ignore_ascii_case(scheme))
}

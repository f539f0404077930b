//! Validation of policy text: Cedar syntax, then the schema. Each problem names its line and
//! column (1-based) in the text.

use std::str::FromStr;

use cedar_policy::{PolicySet, ValidationMode, Validator};
use miette::Diagnostic;
use serde::Serialize;

use crate::MAX_TEXT_BYTES;

/// One problem with a policy text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub message: String,
    /// Where it is, when Cedar says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// Checks a policy text: not empty, at most [`MAX_TEXT_BYTES`], valid Cedar without templates,
/// valid against [`crate::SCHEMA`] (except for `context.arguments`, which the schema does not
/// type).
pub fn validate(text: &str) -> Result<(), Vec<Problem>> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(vec![Problem::general(format!(
            "the policy text is larger than {MAX_TEXT_BYTES} bytes"
        ))]);
    }
    let set = PolicySet::from_str(text).map_err(|e| problems(text, &e))?;
    if set.policies().next().is_none() && set.templates().next().is_none() {
        return Err(vec![Problem::general("the policy text has no policy")]);
    }
    if set.templates().next().is_some() {
        let message = "templates (`?principal`, `?resource`) are not supported";
        return Err(vec![Problem::general(message)]);
    }
    if let Some(problem) = approval_problem(&set) {
        return Err(vec![problem]);
    }
    let result = Validator::new(crate::schema().clone()).validate(&set, ValidationMode::Strict);
    let found: Vec<Problem> = result
        .validation_errors()
        .filter(|e| !about_arguments(text, e))
        .flat_map(|e| problems(text, e))
        .collect();
    if found.is_empty() { Ok(()) } else { Err(found) }
}

/// An `@approval` annotation that names no approver the gateway knows, or sits on a `forbid`
/// (a denial needs nobody's approval).
fn approval_problem(set: &PolicySet) -> Option<Problem> {
    set.policies().find_map(|p| {
        let approver = p.annotation(crate::APPROVAL_ANNOTATION)?;
        if p.effect() == cedar_policy::Effect::Forbid {
            return Some(Problem::general(
                "@approval applies to a permit only (a forbid is never approved)",
            ));
        }
        (approver != crate::APPROVER_USER).then(|| {
            Problem::general(format!(
                "@approval(\"{approver}\") names an unknown approver; the only one is \"{}\"",
                crate::APPROVER_USER
            ))
        })
    })
}

/// Whether a validation error is about `context.arguments`, which the schema leaves untyped:
/// the expression it points at reads them.
fn about_arguments(text: &str, error: &cedar_policy::ValidationError) -> bool {
    let Some(labels) = error.labels() else {
        return false;
    };
    labels.into_iter().any(|label| {
        let (start, len) = (label.offset(), label.len());
        text.get(start..start + len)
            .is_some_and(|snippet| snippet.contains("context.arguments"))
    })
}

/// Every labelled place a diagnostic names, or the diagnostic alone.
fn problems(text: &str, diagnostic: &dyn Diagnostic) -> Vec<Problem> {
    let message = diagnostic.to_string();
    let mut related: Vec<&dyn Diagnostic> = diagnostic.related().into_iter().flatten().collect();
    if related.is_empty() {
        related.push(diagnostic);
    }
    related
        .into_iter()
        .map(|d| {
            let message = match d.help() {
                Some(help) => format!("{d}: {help}"),
                None if d.to_string().is_empty() => message.clone(),
                None => d.to_string(),
            };
            let at = d
                .labels()
                .and_then(|mut l| l.next())
                .map(|l| position(text, l.offset()));
            Problem::at(message, at)
        })
        .collect()
}

/// The 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Problem {
    fn general(message: impl Into<String>) -> Self {
        Self::at(message, None)
    }

    fn at(message: impl Into<String>, at: Option<(usize, usize)>) -> Self {
        Self {
            message: message.into(),
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_policy_passes() {
        let text = r#"forbid (principal, action == Action::"call_tool", resource)
when { principal.role == "member" && !resource.readOnlyHint };"#;
        assert_eq!(validate(text), Ok(()));
    }

    #[test]
    fn a_syntax_error_names_its_line_and_column() {
        let problems =
            validate("permit (principal, action, resource);\nforbid (principal,").unwrap_err();
        assert_eq!(problems[0].line, Some(2), "{problems:?}");
        assert!(problems[0].column.is_some(), "{problems:?}");
    }

    #[test]
    fn an_attribute_the_schema_lacks_is_refused_with_its_place() {
        let text = "permit (principal, action, resource)\nwhen { principal.department == \"x\" };";
        let problems = validate(text).unwrap_err();
        assert_eq!(
            (problems[0].line, problems[0].column),
            (Some(2), Some(8)),
            "{problems:?}"
        );
    }

    #[test]
    fn arguments_are_not_typed_by_the_schema() {
        let text = r#"permit (principal, action == Action::"call_tool", resource)
when { context.arguments has amount && context.arguments.amount < 100 };"#;
        assert_eq!(validate(text), Ok(()));
    }

    #[test]
    fn text_over_the_limit_is_refused() {
        let text = format!(
            "permit (principal, action, resource);{}",
            " ".repeat(MAX_TEXT_BYTES)
        );
        assert!(validate(&text).is_err());
    }
}

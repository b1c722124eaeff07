//! The JSONPath subset printer columns and `/scale` paths use: `.spec.replicas`, `['a.b']`,
//! array indexes (`[0]`, `[-1]`), `[*]`, and filters such as
//! `.status.conditions[?(@.type=="Ready")].status`.

use serde_json::Value;

/// A JSONPath that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unrecognized JSONPath {path:?}: {why}")]
pub struct JsonPathError {
    pub path: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter {
        field: Vec<String>,
        equal: bool,
        literal: Value,
    },
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, JsonPathError> {
        let fail = |why: &str| JsonPathError {
            path: text.to_string(),
            why: why.to_string(),
        };
        let inner = text.trim();
        let inner = inner
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(inner);
        let inner = inner.strip_prefix('$').unwrap_or(inner);
        let mut steps = Vec::new();
        let mut rest = inner;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                if end == 0 {
                    return Err(fail("empty field name"));
                }
                steps.push(Step::Field(after[..end].to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = closing_bracket(after).ok_or_else(|| fail("unclosed ["))?;
                steps.push(bracket(&after[..end]).map_err(|why| fail(&why))?);
                rest = &after[end + 1..];
            } else {
                return Err(fail("expected . or ["));
            }
        }
        Ok(JsonPath(steps))
    }

    /// Every value the path selects in `value`.
    pub fn find<'a>(&self, value: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![value];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in current {
                match step {
                    Step::Field(name) => next.extend(v.get(name.as_str())),
                    Step::Index(i) => {
                        if let Some(items) = v.as_array() {
                            let index = if *i < 0 { items.len() as i64 + i } else { *i };
                            next.extend(usize::try_from(index).ok().and_then(|i| items.get(i)));
                        }
                    }
                    Step::All => match v {
                        Value::Array(items) => next.extend(items),
                        Value::Object(map) => next.extend(map.values()),
                        _ => {}
                    },
                    Step::Filter {
                        field,
                        equal,
                        literal,
                    } => {
                        for item in v.as_array().into_iter().flatten() {
                            let found = field.iter().try_fold(item, |at, f| at.get(f.as_str()));
                            if (found == Some(literal)) == *equal {
                                next.push(item);
                            }
                        }
                    }
                }
            }
            current = next;
        }
        current
    }

    /// The field names of a plain `.a.b.c` path, for writing into (`/scale`).
    pub fn fields(&self) -> Option<Vec<&str>> {
        self.0
            .iter()
            .map(|s| match s {
                Step::Field(name) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Where the `]` closing a bracket is, skipping quoted text.
fn closing_bracket(text: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(text: &str) -> Option<&str> {
    let text = text.trim();
    text.strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| text.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
}

fn bracket(inside: &str) -> Result<Step, String> {
    let inside = inside.trim();
    if inside == "*" {
        return Ok(Step::All);
    }
    if let Some(name) = unquote(inside) {
        return Ok(Step::Field(name.to_string()));
    }
    if let Ok(index) = inside.parse::<i64>() {
        return Ok(Step::Index(index));
    }
    let filter = inside
        .strip_prefix("?(")
        .and_then(|f| f.strip_suffix(')'))
        .ok_or_else(|| format!("unsupported [{inside}]"))?;
    let (left, right, equal) = match filter.split_once("==") {
        Some((l, r)) => (l, r, true),
        None => match filter.split_once("!=") {
            Some((l, r)) => (l, r, false),
            None => return Err(format!("unsupported filter {filter:?}")),
        },
    };
    let field: Vec<String> = left
        .trim()
        .strip_prefix("@.")
        .ok_or_else(|| format!("a filter compares @.field, not {left:?}"))?
        .split('.')
        .map(str::to_string)
        .collect();
    let literal = match unquote(right) {
        Some(s) => Value::String(s.to_string()),
        None => serde_json::from_str(right.trim()).map_err(|_| format!("bad literal {right:?}"))?,
    };
    Ok(Step::Filter {
        field,
        equal,
        literal,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_select_fields_indexes_and_filters() {
        let object = json!({
            "spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 443}], "a.b": "dotted"},
            "status": {"conditions": [
                {"type": "Progressing", "status": "True"},
                {"type": "Ready", "status": "False"}
            ]}
        });
        let find = |p: &str| {
            JsonPath::parse(p)
                .unwrap()
                .find(&object)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(find(".spec.replicas"), vec![json!(3)]);
        assert_eq!(find("{.spec.ports[1].port}"), vec![json!(443)]);
        assert_eq!(find(".spec.ports[-1].port"), vec![json!(443)]);
        assert_eq!(find(".spec.ports[*].port"), vec![json!(80), json!(443)]);
        assert_eq!(find(".spec['a.b']"), vec![json!("dotted")]);
        assert_eq!(
            find(r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![json!("False")]
        );
        assert_eq!(
            find(r#".status.conditions[?(@.type!="Ready")].type"#),
            vec![json!("Progressing")]
        );
        assert!(find(".spec.missing").is_empty());
        assert_eq!(
            JsonPath::parse(".spec.replicas").unwrap().fields(),
            Some(vec!["spec", "replicas"])
        );
        assert!(JsonPath::parse(".spec[").is_err());
        assert!(JsonPath::parse("spec").is_err());
    }
}

//! Label and field selectors, parsed and matched the way kube-apiserver does.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Splits at commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn valid_label_key(key: &str) -> bool {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn parse_set(key: &str, rest: &str, original: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            format!("unable to parse requirement: found '{rest}', expected: '(' in {original:?}")
        })?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(String::is_empty) && inner.trim().is_empty() {
        return Err(format!("for '{key}' the set of values must be non-empty"));
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses `app=web,tier!=db,env in (prod,staging),!legacy`.
    pub fn parse(selector: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(selector) {
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(key.trim().to_string(), parse_set(key, rest, selector)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                Requirement::In(key.trim().to_string(), parse_set(key, rest, selector)?)
            } else {
                Requirement::Exists(part.to_string())
            };
            let key = match &requirement {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::DoesNotExist(k) => k,
            };
            if !valid_label_key(key) {
                return Err(format!(
                    "unable to parse requirement: invalid label key {key:?}"
                ));
            }
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements })
    }

    /// The selector a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`)
    /// stands for, or why it is malformed (an unknown operator, a set operator without
    /// values, an existence operator with values).
    pub fn from_object(selector: &Value) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for (key, value) in selector
            .get("matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let value = value
                .as_str()
                .ok_or_else(|| format!("the value of label {key:?} is not a string"))?;
            requirements.push(Requirement::Equals(key.clone(), value.to_string()));
        }
        for expression in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expression
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut values: Vec<String> = expression
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            values.sort();
            values.dedup();
            let operator = expression.get("operator").and_then(Value::as_str);
            requirements.push(match (operator, values.is_empty()) {
                (Some("In"), false) => Requirement::In(key, values),
                (Some("NotIn"), false) => Requirement::NotIn(key, values),
                (Some("Exists"), true) => Requirement::Exists(key),
                (Some("DoesNotExist"), true) => Requirement::DoesNotExist(key),
                (Some(op @ ("In" | "NotIn")), true) => {
                    return Err(format!(
                        "for '{op}', 'NotIn' operators, values set can't be empty"
                    ))
                }
                (Some(op @ ("Exists" | "DoesNotExist")), false) => {
                    return Err(format!(
                        "values set must be empty for {op} and DoesNotExist"
                    ))
                }
                (op, _) => {
                    return Err(format!(
                        "{:?} is not a valid label selector operator",
                        op.unwrap_or_default()
                    ))
                }
            });
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's labels match.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// The selector as text, requirements sorted by key (upstream's `Selector.String()`).
impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut terms: Vec<(&str, String)> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => (k.as_str(), format!("{k}={v}")),
                Requirement::NotEquals(k, v) => (k.as_str(), format!("{k}!={v}")),
                Requirement::In(k, vs) => (k.as_str(), format!("{k} in ({})", vs.join(","))),
                Requirement::NotIn(k, vs) => (k.as_str(), format!("{k} notin ({})", vs.join(","))),
                Requirement::Exists(k) => (k.as_str(), k.clone()),
                Requirement::DoesNotExist(k) => (k.as_str(), format!("!{k}")),
            })
            .collect();
        terms.sort();
        let terms: Vec<String> = terms.into_iter().map(|(_, t)| t).collect();
        f.write_str(&terms.join(","))
    }
}

/// A parsed field selector: equality tests on dotted fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

/// Fields every kind can be selected by.
const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// Extra selectable fields per kind, as upstream registers them.
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
        ],
        "Secret" => &["type"],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "ReplicaSet" | "ReplicationController" => &["status.replicas"],
        "Job" => &["status.successful"],
        "CertificateSigningRequest" => &["spec.signerName"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `metadata.name=web,status.phase!=Running` for objects of `kind`.
    pub fn parse(selector: &str, kind: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, negated, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            if !COMMON_FIELDS.contains(&field) && !kind_fields(kind).contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), negated, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether an object matches. Absent fields compare as the empty string.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(field, negated, value)| {
            let mut current = Some(object);
            for part in field.split('.') {
                current = current.and_then(|v| v.get(part));
            }
            let actual = match current {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == *value) != *negated
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let l = labels(json!({"app": "web", "env": "prod"}));
        let matches = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(matches(""));
        assert!(matches("app=web"));
        assert!(matches("app==web,env"));
        assert!(!matches("app!=web"));
        assert!(matches("env in (prod, staging)"));
        assert!(!matches("env notin (prod)"));
        assert!(matches("!legacy"));
        assert!(!matches("legacy"));
        assert!(matches("tier notin (db)"));
        assert!(LabelSelector::parse("env in prod").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
        assert!(!LabelSelector::parse("app=web").unwrap().matches(None));
    }

    #[test]
    fn field_selectors_check_supported_fields() {
        let pod = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let matches = |s: &str| FieldSelector::parse(s, "Pod").unwrap().matches(&pod);
        assert!(matches("metadata.name=a"));
        assert!(matches("spec.nodeName=n1,status.phase!=Pending"));
        assert!(!matches("metadata.namespace=other"));
        assert!(FieldSelector::parse("spec.nodeName=", "Pod")
            .unwrap()
            .matches(&json!({})));
        assert_eq!(
            FieldSelector::parse("spec.foo=1", "Pod").unwrap_err(),
            "field label not supported: spec.foo"
        );
        assert!(FieldSelector::parse("involvedObject.kind=Pod", "Event").is_ok());
    }
}

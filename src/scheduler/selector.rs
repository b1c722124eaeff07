//! Matching labels, node selector terms and tolerations: the vocabulary every plugin shares.
//!
//! Semantics follow apimachinery's `LabelSelectorAsSelector` and core's node selector
//! helpers: an empty label selector matches everything, an absent one nothing; node
//! selector terms are ORed, the requirements inside one term ANDed, and an empty term
//! matches no node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

pub type Labels = BTreeMap<String, String>;

/// Whether `labels` satisfy a (present) label selector.
pub fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && sel
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let got = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => got.is_some_and(|v| values.contains(v)),
        "NotIn" => got.is_none_or(|v| !values.contains(v)),
        "Exists" => got.is_some(),
        "DoesNotExist" => got.is_none(),
        _ => false,
    }
}

/// Adds `key In [value]` for each key of `match_label_keys` the pod has (and `NotIn` for
/// `mismatch_label_keys`), as upstream merges them into affinity and spread selectors.
pub fn with_label_keys(
    sel: &LabelSelector,
    pod_labels: &Labels,
    match_keys: &[String],
    mismatch_keys: &[String],
) -> LabelSelector {
    let mut out = sel.clone();
    let extra = |keys: &[String], op: &str| -> Vec<LabelSelectorRequirement> {
        keys.iter()
            .filter_map(|k| {
                pod_labels.get(k).map(|v| LabelSelectorRequirement {
                    key: k.clone(),
                    operator: op.to_string(),
                    values: Some(vec![v.clone()]),
                })
            })
            .collect()
    };
    let mut added = extra(match_keys, "In");
    added.extend(extra(mismatch_keys, "NotIn"));
    if !added.is_empty() {
        out.match_expressions
            .get_or_insert_with(Vec::new)
            .extend(added);
    }
    out
}

/// Whether a node (its labels and name) matches one node selector term.
pub fn term_matches(term: &NodeSelectorTerm, labels: &Labels, node_name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| node_requirement_matches(r, labels.get(&r.key)))
        && fields.iter().all(|r| {
            // `metadata.name` is the only field a node selector may name.
            let name = (r.key == "metadata.name").then(|| node_name.to_string());
            node_requirement_matches(r, name.as_ref())
        })
}

fn node_requirement_matches(r: &NodeSelectorRequirement, got: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let as_int = |s: &str| s.parse::<i64>().ok();
    let compare = |ord: std::cmp::Ordering| match (
        got.and_then(|v| as_int(v)),
        values.first().and_then(|v| as_int(v)),
    ) {
        (Some(have), Some(bound)) if values.len() == 1 => have.cmp(&bound) == ord,
        _ => false,
    };
    match r.operator.as_str() {
        "In" => got.is_some_and(|v| values.contains(v)),
        "NotIn" => got.is_none_or(|v| !values.contains(v)),
        "Exists" => got.is_some(),
        "DoesNotExist" => got.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

/// Whether one toleration tolerates a taint (core's `Toleration.ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// Whether any of the tolerations tolerates the taint.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn term(reqs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(reqs),
            match_fields: None,
        }
    }

    #[test]
    fn node_selector_operators() {
        let l = labels(&[("zone", "a"), ("cores", "8")]);
        assert!(term_matches(
            &term(vec![req("zone", "In", &["a", "b"])]),
            &l,
            "n"
        ));
        assert!(!term_matches(
            &term(vec![req("zone", "NotIn", &["a"])]),
            &l,
            "n"
        ));
        assert!(term_matches(
            &term(vec![req("disk", "NotIn", &["ssd"])]),
            &l,
            "n"
        ));
        assert!(term_matches(
            &term(vec![req("zone", "Exists", &[])]),
            &l,
            "n"
        ));
        assert!(term_matches(
            &term(vec![req("disk", "DoesNotExist", &[])]),
            &l,
            "n"
        ));
        assert!(term_matches(
            &term(vec![req("cores", "Gt", &["4"])]),
            &l,
            "n"
        ));
        assert!(!term_matches(
            &term(vec![req("cores", "Gt", &["8"])]),
            &l,
            "n"
        ));
        assert!(term_matches(
            &term(vec![req("cores", "Lt", &["9"])]),
            &l,
            "n"
        ));
        assert!(
            !term_matches(&term(vec![req("zone", "Lt", &["9"])]), &l, "n"),
            "not an integer"
        );
        assert!(!term_matches(
            &term(vec![req("missing", "Gt", &["1"])]),
            &l,
            "n"
        ));
        assert!(
            !term_matches(&term(vec![]), &l, "n"),
            "an empty term matches nothing"
        );
        assert!(!term_matches(
            &term(vec![req("zone", "In", &["a"]), req("cores", "Lt", &["2"])]),
            &l,
            "n"
        ));
    }

    #[test]
    fn match_fields_name_the_node() {
        let t = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
        };
        assert!(term_matches(&t, &Labels::new(), "n1"));
        assert!(!term_matches(&t, &Labels::new(), "n2"));
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        assert!(
            selector_matches(&LabelSelector::default(), &l),
            "empty matches all"
        );
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(selector_matches(&sel, &l));
        assert!(!selector_matches(&sel, &labels(&[("app", "db")])));
        let merged = with_label_keys(&LabelSelector::default(), &l, &["tier".into()], &[]);
        assert!(selector_matches(&merged, &l));
        assert!(!selector_matches(&merged, &labels(&[("tier", "be")])));
    }

    #[test]
    fn tolerations() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let tol = |key: Option<&str>,
                   op: Option<&str>,
                   value: Option<&str>,
                   effect: Option<&str>| Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        };
        assert!(tolerates(
            &tol(Some("dedicated"), None, Some("gpu"), None),
            &taint
        ));
        assert!(!tolerates(
            &tol(Some("dedicated"), None, Some("cpu"), None),
            &taint
        ));
        assert!(tolerates(
            &tol(Some("dedicated"), Some("Exists"), None, Some("NoSchedule")),
            &taint
        ));
        assert!(!tolerates(
            &tol(Some("dedicated"), Some("Exists"), None, Some("NoExecute")),
            &taint
        ));
        assert!(
            tolerates(&tol(None, Some("Exists"), None, None), &taint),
            "tolerates everything"
        );
        assert!(!tolerates(
            &tol(Some("other"), Some("Exists"), None, None),
            &taint
        ));
    }
}

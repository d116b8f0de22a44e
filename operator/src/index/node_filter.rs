//! What a pod template asks of a node: its `nodeSelector`, its required node affinity and the taints its
//! tolerations accept, checked against a Kubernetes Node the way kube-scheduler's filters check them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, Taint, Toleration};
use kube::ResourceExt;
use serde_json::Value;

/// Why a template's node constraints cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A field is not what Kubernetes expects.
    #[error("{field}: {message}")]
    Malformed {
        /// The field, from the job's spec.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The node constraints of one template; the default asks nothing (but still tolerates no taint).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFilter {
    /// `spec.nodeSelector`.
    pub selector: BTreeMap<String, String>,
    /// `spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution`.
    pub affinity: Option<NodeSelector>,
    /// `spec.tolerations`.
    pub tolerations: Vec<Toleration>,
}

/// The part of a filter that refuses a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// A label of the nodeSelector is missing or different.
    Selector,
    /// No term of the required node affinity matches.
    Affinity,
    /// A NoSchedule or NoExecute taint is not tolerated.
    Taint,
}

impl NodeFilter {
    /// Reads the constraints of `template` (a pod template); `at` is the template's field path, for errors.
    pub fn of(template: Option<&Value>, at: &str) -> Result<Self, FilterError> {
        let Some(spec) = template.and_then(|t| t.get("spec")) else { return Ok(NodeFilter::default()) };
        let selector = match spec.get("nodeSelector") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => parse(v, &format!("{at}.spec.nodeSelector"))?,
        };
        let affinity = match spec
            .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution")
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse(
                v,
                &format!("{at}.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"),
            )?),
        };
        let tolerations = match spec.get("tolerations") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse(v, &format!("{at}.spec.tolerations"))?,
        };
        Ok(NodeFilter { selector, affinity, tolerations })
    }

    /// Whether it limits nodes by their labels (not only by their taints).
    pub fn selects(&self) -> bool {
        !self.selector.is_empty() || self.affinity.is_some()
    }

    /// A key that is equal for filters that accept the same nodes.
    pub fn key(&self) -> String {
        serde_json::json!([self.selector, self.affinity, self.tolerations]).to_string()
    }

    /// The first part of the filter that refuses `node`, or `None` when it may run there.
    pub fn refusal(&self, node: &Node) -> Option<Refusal> {
        let labels = node.labels();
        if !self.selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return Some(Refusal::Selector);
        }
        if let Some(a) = &self.affinity {
            let name = node.name_any();
            let term_ok = |t: &k8s_openapi::api::core::v1::NodeSelectorTerm| {
                let exprs = t.match_expressions.as_deref().unwrap_or_default();
                let fields = t.match_fields.as_deref().unwrap_or_default();
                // An empty term matches no node.
                (!exprs.is_empty() || !fields.is_empty())
                    && exprs.iter().all(|r| matches(r, labels.get(&r.key).map(String::as_str)))
                    && fields.iter().all(|r| matches(r, (r.key == "metadata.name").then_some(name.as_str())))
            };
            if !a.node_selector_terms.iter().any(term_ok) {
                return Some(Refusal::Affinity);
            }
        }
        if self.untolerated(node).is_some() {
            return Some(Refusal::Taint);
        }
        None
    }

    /// The first taint of `node` that keeps the template off it: effect NoSchedule or NoExecute, not tolerated.
    /// Taints under `node.kubernetes.io/` are left out: readiness, cordons and fencing are judged on their own.
    pub fn untolerated<'a>(&self, node: &'a Node) -> Option<&'a Taint> {
        node.spec.as_ref()?.taints.as_ref()?.iter().find(|t| {
            matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
                && !t.key.starts_with("node.kubernetes.io/")
                && !self.tolerations.iter().any(|tol| tolerates(tol, t))
        })
    }

    /// For people: the parts of the filter, e.g. `nodeSelector gpu=a100 + required nodeAffinity`.
    pub fn describe(&self, parts: &[Refusal]) -> String {
        let mut out = Vec::new();
        for p in parts {
            out.push(match p {
                Refusal::Selector => {
                    let labels: Vec<String> = self.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("nodeSelector {}", labels.join(","))
                }
                Refusal::Affinity => "required nodeAffinity".to_string(),
                Refusal::Taint => "taints it does not tolerate".to_string(),
            });
        }
        out.join(" + ")
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, field: &str) -> Result<T, FilterError> {
    serde_json::from_value(v.clone()).map_err(|e| FilterError::Malformed {
        field: field.to_string(),
        message: format!("{e}; see the PodSpec"),
    })
}

/// Whether a label (or field) value satisfies one requirement, as Kubernetes' node selector operators define it.
fn matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

/// Whether a toleration tolerates a taint (an empty key with `Exists` tolerates every taint).
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = tol.key.as_deref().unwrap_or_default();
    let key_ok = key.is_empty() || key == taint.key;
    let value_ok = match tol.operator.as_deref() {
        Some("Exists") => true,
        _ => {
            !key.is_empty()
                && tol.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
    };
    effect_ok && key_ok && value_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: Value, taints: Value) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}}),
        )
        .expect("node")
    }

    fn filter(spec: Value) -> NodeFilter {
        NodeFilter::of(Some(&json!({"spec": spec})), "t").expect("filter")
    }

    #[test]
    fn a_selector_needs_every_label() {
        let f = filter(json!({"nodeSelector": {"zone": "a", "gpu": "h100"}}));
        assert_eq!(f.refusal(&node("n", json!({"zone": "a", "gpu": "h100", "x": "y"}), json!([])),), None);
        assert_eq!(f.refusal(&node("n", json!({"zone": "a"}), json!([]))), Some(Refusal::Selector));
        assert!(f.selects());
        assert!(!filter(json!({})).selects());
    }

    #[test]
    fn affinity_terms_are_ored_and_requirements_anded() {
        let f =
            filter(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                                      {"key": "spot", "operator": "DoesNotExist"}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]},
                {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["64"]}]}
            ]}}}}));
        let ok = |labels: Value, name: &str| f.refusal(&node(name, labels, json!([]))).is_none();
        assert!(ok(json!({"zone": "b"}), "n"));
        assert!(!ok(json!({"zone": "b", "spot": "true"}), "n"));
        assert!(!ok(json!({"zone": "c"}), "n"));
        assert!(ok(json!({}), "special"));
        assert!(ok(json!({"cores": "128"}), "n"));
        assert!(!ok(json!({"cores": "64"}), "n"));
        assert!(!ok(json!({"cores": "many"}), "n"));
        let not_in = filter(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}]}}}}),
        );
        assert!(not_in.refusal(&node("n", json!({}), json!([]))).is_none(), "NotIn matches a missing label");
        let empty =
            filter(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{}]}}}}));
        assert_eq!(empty.refusal(&node("n", json!({}), json!([]))), Some(Refusal::Affinity));
    }

    #[test]
    fn taints_are_kept_off_unless_tolerated() {
        let tainted =
            node("n", json!({}), json!([{"key": "dedicated", "value": "infer", "effect": "NoSchedule"}]));
        let soft = node(
            "n",
            json!({}),
            json!([{"key": "dedicated", "value": "infer", "effect": "PreferNoSchedule"}]),
        );
        let lifecycle = node(
            "n",
            json!({}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
        );
        assert_eq!(filter(json!({})).refusal(&tainted), Some(Refusal::Taint));
        assert_eq!(filter(json!({})).refusal(&soft), None, "PreferNoSchedule does not keep a pod off");
        assert_eq!(filter(json!({})).refusal(&lifecycle), None, "cordons are judged elsewhere");
        for tol in [
            json!({"key": "dedicated", "operator": "Equal", "value": "infer"}),
            json!({"key": "dedicated", "value": "infer", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "operator": "Exists"}),
            json!({"operator": "Exists"}),
        ] {
            assert_eq!(filter(json!({"tolerations": [tol.clone()]})).refusal(&tainted), None, "{tol}");
        }
        for tol in [
            json!({"key": "dedicated", "value": "train"}),
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
            json!({"key": "other", "operator": "Exists"}),
        ] {
            assert_eq!(
                filter(json!({"tolerations": [tol.clone()]})).refusal(&tainted),
                Some(Refusal::Taint),
                "{tol}"
            );
        }
    }

    #[test]
    fn a_malformed_constraint_names_its_field() {
        let e = NodeFilter::of(
            Some(&json!({"spec": {"tolerations": {"key": "x"}}})),
            "spec.taskGroups[0].template",
        );
        let Err(FilterError::Malformed { field, .. }) = e else { panic!("{e:?}") };
        assert_eq!(field, "spec.taskGroups[0].template.spec.tolerations");
    }
}

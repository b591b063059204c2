//! A load balancer's child resources (`probes`, `loadBalancingRules`, `backendAddressPools`,
//! `frontendIPConfigurations`) as ARM addresses them: `{lb}/{collection}/{name}`. They live in
//! the parent's body, so a child PUT or DELETE is a new parent body, computed here and then
//! validated and stored as a whole (`control`'s `put_lb`), with every rule of the parent's PUT.
use crate::{names, ModelError};
use serde_json::{json, Value};

/// The child collections of a load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbChild {
    FrontendIpConfigurations,
    BackendAddressPools,
    Probes,
    LoadBalancingRules,
}

impl LbChild {
    pub const ALL: [LbChild; 4] = [
        LbChild::FrontendIpConfigurations,
        LbChild::BackendAddressPools,
        LbChild::Probes,
        LbChild::LoadBalancingRules,
    ];

    /// The collection's name in the parent's `properties` and in the path.
    pub fn collection(self) -> &'static str {
        match self {
            LbChild::FrontendIpConfigurations => "frontendIPConfigurations",
            LbChild::BackendAddressPools => "backendAddressPools",
            LbChild::Probes => "probes",
            LbChild::LoadBalancingRules => "loadBalancingRules",
        }
    }

    /// What a person calls one, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            LbChild::FrontendIpConfigurations => "frontend IP configuration",
            LbChild::BackendAddressPools => "backend address pool",
            LbChild::Probes => "probe",
            LbChild::LoadBalancingRules => "load balancing rule",
        }
    }

    /// The path segment (any case, as ARM).
    pub fn parse(segment: &str) -> Option<LbChild> {
        Self::ALL
            .into_iter()
            .find(|c| c.collection().eq_ignore_ascii_case(segment))
    }

    /// Probes and rules can be put and deleted on their own; pools and frontends only with the
    /// parent (a pool's or frontend's removal reaches into scale sets and rules).
    pub fn writable(self) -> bool {
        matches!(self, LbChild::Probes | LbChild::LoadBalancingRules)
    }

    /// The child's ARM type, e.g. `Microsoft.Network/loadBalancers/probes`.
    pub fn resource_type(self) -> String {
        format!("Microsoft.Network/loadBalancers/{}", self.collection())
    }
}

fn items(lb: &Value, child: LbChild) -> &[Value] {
    lb.pointer(&format!("/properties/{}", child.collection()))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn named(item: &Value, name: &str) -> bool {
    item.get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n.eq_ignore_ascii_case(name))
}

/// The child `name` of load balancer body `lb`.
pub fn get<'a>(lb: &'a Value, child: LbChild, name: &str) -> Option<&'a Value> {
    items(lb, child).iter().find(|i| named(i, name))
}

/// The children of `child`'s collection.
pub fn list(lb: &Value, child: LbChild) -> Vec<Value> {
    items(lb, child).to_vec()
}

/// `lb` with child `name` replaced by `item` (or added at the end), and whether it is new.
/// The path names the child: a body's `name`, if any, must agree; its `id`, `type` and `etag`
/// are read-only and dropped. Only `properties` is kept, so the stored child is what ARM keeps.
pub fn put(
    lb: &Value,
    child: LbChild,
    name: &str,
    item: &Value,
) -> Result<(Value, bool), ModelError> {
    names::network_or_image(child.noun(), name)?;
    let Some(obj) = item.as_object() else {
        return Err(ModelError::new(
            "InvalidRequestContent",
            "The request content must be a JSON object.",
        ));
    };
    if let Some(n) = obj.get("name").filter(|n| !n.is_null()) {
        if !n.as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)) {
            return Err(ModelError::invalid(format!(
                "The {} name in the body ({n}) does not match the name in the path ('{name}').",
                child.noun()
            )));
        }
    }
    let props = match obj.get("properties") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(ModelError::invalid(format!(
                "The {} '{name}': properties must be an object.",
                child.noun()
            )))
        }
    };
    let new_item = json!({"name": name, "properties": props});
    let mut out = lb.clone();
    if !out["properties"].is_object() {
        out["properties"] = json!({});
    }
    let coll = &mut out["properties"][child.collection()];
    if !coll.is_array() {
        *coll = json!([]);
    }
    let arr = coll.as_array_mut().expect("just made an array");
    let created = match arr.iter_mut().find(|i| named(i, name)) {
        Some(old) => {
            // The stored spelling of the name stays (rules refer to it).
            let spelled = old["name"].clone();
            *old = new_item;
            old["name"] = spelled;
            false
        }
        None => {
            arr.push(new_item);
            true
        }
    };
    Ok((out, created))
}

/// `lb` without child `name`; `None` when it has no such child.
pub fn remove(lb: &Value, child: LbChild, name: &str) -> Option<Value> {
    get(lb, child, name)?;
    let mut out = lb.clone();
    if let Some(arr) = out
        .pointer_mut(&format!("/properties/{}", child.collection()))
        .and_then(Value::as_array_mut)
    {
        arr.retain(|i| !named(i, name));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb() -> Value {
        json!({"location": "local", "properties": {
            "probes": [{"name": "Http", "properties": {"protocol": "Http", "port": 80, "requestPath": "/"}}],
            "loadBalancingRules": [],
        }})
    }

    #[test]
    fn segments_and_writability() {
        let table = [
            ("probes", Some(LbChild::Probes), true),
            (
                "LOADBALANCINGRULES",
                Some(LbChild::LoadBalancingRules),
                true,
            ),
            (
                "backendAddressPools",
                Some(LbChild::BackendAddressPools),
                false,
            ),
            (
                "frontendipconfigurations",
                Some(LbChild::FrontendIpConfigurations),
                false,
            ),
            ("inboundNatRules", None, false),
        ];
        for (seg, want, writable) in table {
            assert_eq!(LbChild::parse(seg), want, "{seg}");
            assert_eq!(want.is_some_and(LbChild::writable), writable, "{seg}");
        }
        assert_eq!(
            LbChild::Probes.resource_type(),
            "Microsoft.Network/loadBalancers/probes"
        );
    }

    #[test]
    fn put_replaces_or_appends_and_keeps_only_properties() {
        let tcp = json!({"id": "x", "etag": "e", "type": "t", "properties": {"protocol": "Tcp", "port": 22}});
        // Same name in another case: replaced, stored spelling kept.
        let (out, created) = put(&lb(), LbChild::Probes, "HTTP", &tcp).unwrap();
        assert!(!created);
        assert_eq!(
            out["properties"]["probes"],
            json!([{"name": "Http", "properties": {"protocol": "Tcp", "port": 22}}])
        );
        let (out, created) = put(&out, LbChild::Probes, "ssh", &json!({"name": "ssh"})).unwrap();
        assert!(created);
        assert_eq!(
            out["properties"]["probes"][1],
            json!({"name": "ssh", "properties": {}})
        );
        // A collection that was absent is made.
        let (out, created) = put(&json!({}), LbChild::LoadBalancingRules, "r", &json!({})).unwrap();
        assert!(created);
        assert_eq!(out["properties"]["loadBalancingRules"][0]["name"], "r");
    }

    #[test]
    fn put_refusals() {
        let cases = [
            ("bad name", json!({}), "InvalidResourceName"),
            ("p", json!([]), "InvalidRequestContent"),
            ("p", json!({"name": "q"}), "InvalidParameter"),
            ("p", json!({"name": 7}), "InvalidParameter"),
            ("p", json!({"properties": "x"}), "InvalidParameter"),
        ];
        for (name, body, code) in cases {
            let e = put(&lb(), LbChild::Probes, name, &body).unwrap_err();
            assert_eq!(e.code, code, "{name} {body}");
        }
    }

    #[test]
    fn get_list_remove() {
        assert!(get(&lb(), LbChild::Probes, "http").is_some());
        assert!(get(&lb(), LbChild::Probes, "nope").is_none());
        assert_eq!(list(&lb(), LbChild::Probes).len(), 1);
        assert!(list(&lb(), LbChild::BackendAddressPools).is_empty());
        let out = remove(&lb(), LbChild::Probes, "HTTP").unwrap();
        assert_eq!(out["properties"]["probes"], json!([]));
        assert!(remove(&lb(), LbChild::Probes, "nope").is_none());
        assert!(remove(&json!({}), LbChild::LoadBalancingRules, "r").is_none());
    }
}

//! ARM resource ids: `/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{type}/{name}[/{child}/{name}]`.
use crate::ModelError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceId {
    pub subscription: String,
    pub resource_group: String,
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub child: Option<(String, String)>,
}

impl ResourceId {
    pub fn new(sub: &str, rg: &str, namespace: &str, kind: &str, name: &str) -> Self {
        Self {
            subscription: sub.into(),
            resource_group: rg.into(),
            namespace: namespace.into(),
            kind: kind.into(),
            name: name.into(),
            child: None,
        }
    }
    pub fn child(mut self, kind: &str, name: &str) -> Self {
        self.child = Some((kind.into(), name.into()));
        self
    }

    /// Parses an id; segment names are matched case-insensitively, as ARM does.
    pub fn parse(id: &str) -> Result<Self, ModelError> {
        let bad = || {
            ModelError::new("LinkedInvalidPropertyId", format!("Property id '{id}' at path is invalid. Expect fully qualified resource Id that start with '/subscriptions/{{subscriptionId}}' or '/providers/{{resourceProviderNamespace}}/'."))
        };
        let parts: Vec<&str> = id.trim_start_matches('/').split('/').collect();
        if parts.len() < 8 || parts.len() == 9 || parts.len() > 10 {
            return Err(bad());
        }
        if !parts[0].eq_ignore_ascii_case("subscriptions")
            || !parts[2].eq_ignore_ascii_case("resourceGroups")
            || !parts[4].eq_ignore_ascii_case("providers")
        {
            return Err(bad());
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(Self {
            subscription: parts[1].into(),
            resource_group: parts[3].into(),
            namespace: parts[5].into(),
            kind: parts[6].into(),
            name: parts[7].into(),
            child: (parts.len() == 10).then(|| (parts[8].to_string(), parts[9].to_string())),
        })
    }

    pub fn is(&self, namespace: &str, kind: &str) -> bool {
        self.namespace.eq_ignore_ascii_case(namespace) && self.kind.eq_ignore_ascii_case(kind)
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}/{}",
            self.subscription, self.resource_group, self.namespace, self.kind, self.name
        )?;
        if let Some((k, n)) = &self.child {
            write!(f, "/{k}/{n}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for ResourceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ResourceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ResourceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let s = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb/probes/p";
        let id = ResourceId::parse(s).unwrap();
        assert_eq!(id.child, Some(("probes".into(), "p".into())));
        assert!(id.is("microsoft.network", "LOADBALANCERS"));
        assert_eq!(id.to_string(), s);
        let img = ResourceId::parse(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/120",
        )
        .unwrap();
        assert_eq!(img.name, "120");
        for bad in [
            "",
            "/",
            "/subscriptions/s",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images",
            "/foo/s/resourceGroups/rg/providers/a/b/c",
            "/subscriptions/s/resourceGroups/rg/providers/a/b/c/d",
            "/subscriptions/s/resourceGroups//providers/a/b/c",
        ] {
            assert!(ResourceId::parse(bad).is_err(), "{bad}");
        }
    }
}

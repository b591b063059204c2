//! A compact validator for the Swagger 2.0 subset Microsoft's ARM specs use: `$ref` (local and
//! relative-file), `allOf`, `type`, `properties`, `required`, `additionalProperties`, `enum`
//! (+ `x-ms-enum`), `items`, `readOnly`, `x-ms-secret`, `x-nullable`, `discriminator`,
//! `minimum`/`maximum`/`minItems`/`maxLength`, and `format` loosely (int32, int64, date-time,
//! uuid, duration, arm-id). Written for the tests instead of a JSON-schema crate: the specs are
//! Swagger 2.0 (not JSON Schema), and the build has two cores.
//!
//! Strictness follows Microsoft's own model validator (oav) for responses: a property that a
//! model does not declare is a violation, unless the caller allows it by path. A reference to a
//! spec file that is not in the shared folder is treated as an open schema and remembered.
#![allow(dead_code)]
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// The definition of the load balancer child a PUT or DELETE of `path` writes on its own path
/// (`…/loadBalancers/{lb}/probes/{name}`: `Probe`; `…/loadBalancingRules/{name}`:
/// `LoadBalancingRule`), if it is one.
pub fn lb_child_write(method: &str, path: &str) -> Option<&'static str> {
    if !matches!(method, "PUT" | "DELETE") {
        return None;
    }
    let bare = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = bare.trim_matches('/').split('/').collect();
    let [.., lbs, _, coll, _] = segs.as_slice() else {
        return None;
    };
    if !lbs.eq_ignore_ascii_case("loadBalancers") {
        return None;
    }
    match coll.to_ascii_lowercase().as_str() {
        "probes" => Some("Probe"),
        "loadbalancingrules" => Some("LoadBalancingRule"),
        _ => None,
    }
}

/// Undeclared properties scaleset returns on purpose (ARCHITECTURE.md, "API contract"): the
/// deploy receipt of a rolling upgrade (requests and failures the LB saw meanwhile).
pub fn scaleset_extension(path: &str) -> bool {
    path == "$.properties.receipt"
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// A request body: read-only properties are ignored (ARM ignores them, and clients echo GET
    /// bodies back), enums compare case-insensitively (ARM does), `required` applies.
    Request,
    /// A response body: read-only properties are checked, enums must match exactly, secrets must
    /// not be returned.
    Response,
}

/// A schema in the file it came from (relative `$ref`s resolve against that file).
#[derive(Clone)]
pub struct At {
    pub file: PathBuf,
    pub schema: Value,
}

pub struct Specs {
    root: PathBuf,
    files: RefCell<HashMap<PathBuf, Option<Rc<Value>>>>,
    /// References to files that are not present, left open.
    pub open_refs: RefCell<BTreeSet<String>>,
}

/// An operation of a spec: where it is, and its request/response schemas.
pub struct Operation {
    pub file: PathBuf,
    pub template: String,
    pub id: String,
    pub op: Value,
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

impl Specs {
    /// `root` is the `specification` folder.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: Default::default(),
            open_refs: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A spec file by path relative to `root` (or absolute); None if it is not there.
    pub fn file(&self, path: &Path) -> Option<Rc<Value>> {
        let abs = normalize(&self.root.join(path));
        if let Some(v) = self.files.borrow().get(&abs) {
            return v.clone();
        }
        let v = std::fs::read_to_string(&abs).ok().map(|s| {
            Rc::new(serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", abs.display())))
        });
        self.files.borrow_mut().insert(abs, v.clone());
        v
    }

    /// Resolves `$ref` as seen from `from`. None means "open": the file is not here.
    pub fn resolve(&self, from: &Path, r: &str) -> Option<At> {
        let (file_part, pointer) = r.split_once('#').unwrap_or((r, ""));
        let file = if file_part.is_empty() {
            normalize(&self.root.join(from))
        } else {
            normalize(&self.root.join(from).parent().unwrap().join(file_part))
        };
        let Some(doc) = self.file(&file) else {
            self.open_refs.borrow_mut().insert(format!(
                "{} (from {})",
                r,
                from.file_name().unwrap_or_default().to_string_lossy()
            ));
            return None;
        };
        let schema = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{r}: no {pointer} in {}", file.display()))
            .clone();
        Some(At { file, schema })
    }

    /// Finds the operation for `method` and a concrete request `path` among `files` (relative to
    /// root). ARM paths are case-insensitive; the template with most literal segments wins.
    pub fn operation(&self, files: &[&str], method: &str, path: &str) -> Option<Operation> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut best: Option<(usize, Operation)> = None;
        for f in files {
            let doc = self
                .file(Path::new(f))
                .unwrap_or_else(|| panic!("spec {f} missing"));
            let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
                continue;
            };
            for (tpl, ops) in paths {
                let t: Vec<&str> = tpl.trim_matches('/').split('/').collect();
                if t.len() != segs.len() {
                    continue;
                }
                let mut literal = 0;
                let ok = t.iter().zip(&segs).all(|(a, b)| {
                    if a.starts_with('{') {
                        true
                    } else {
                        literal += 1;
                        a.eq_ignore_ascii_case(b)
                    }
                });
                let Some(op) = ops.get(method.to_ascii_lowercase()) else {
                    continue;
                };
                if ok && best.as_ref().is_none_or(|(n, _)| literal > *n) {
                    best = Some((
                        literal,
                        Operation {
                            file: normalize(&self.root.join(f)),
                            template: tpl.clone(),
                            id: op["operationId"].as_str().unwrap_or("").to_string(),
                            op: op.clone(),
                        },
                    ));
                }
            }
        }
        best.map(|b| b.1)
    }

    /// The body parameter's schema of an operation, if it takes one.
    pub fn request_schema(&self, op: &Operation) -> Option<At> {
        op.op["parameters"]
            .as_array()?
            .iter()
            .map(|p| self.deref(&op.file, p))
            .find(|p| p.schema["in"] == "body")
            .map(|p| At {
                file: p.file,
                schema: p.schema["schema"].clone(),
            })
    }

    /// The response schema for `status`: Some(None) when the status is declared without a body,
    /// None when it is not declared at all (errors fall back to `default`).
    pub fn response_schema(&self, op: &Operation, status: u16) -> Option<Option<At>> {
        let r = &op.op["responses"];
        let entry = r
            .get(status.to_string())
            .or_else(|| (status >= 400).then(|| r.get("default")).flatten())?;
        Some(entry.get("schema").map(|s| At {
            file: op.file.clone(),
            schema: s.clone(),
        }))
    }

    /// Checks one HTTP exchange against the operation it hits among `files`: the request body
    /// (if given) against the body parameter, the response against the schema for its status.
    /// Paths outside the specs (resource groups, operation status) are not checked.
    #[allow(clippy::too_many_arguments)]
    pub fn check_exchange(
        &self,
        files: &[&str],
        method: &str,
        path: &str,
        request: Option<&Value>,
        status: u16,
        response: &Value,
        allow: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        let bare = path.split('?').next().unwrap_or(path);
        let what = format!("{method} {bare}");
        let mut out = Vec::new();
        let Some(op) = self.operation(files, method, bare) else {
            // Microsoft.Resources is not among the shared specs, and operation status resources
            // are ARM's async protocol, not part of a provider's spec.
            let rg_only = bare.trim_matches('/').split('/').count() <= 4;
            if !rg_only && !bare.contains("/locations/") {
                out.push(format!("{what}: no operation in the specs"));
            }
            return out;
        };
        if let Some(b) = request {
            match self.request_schema(&op) {
                Some(s) => {
                    for v in self.validate(&s, b, Dir::Request, &|_| false) {
                        out.push(format!("{what} ({}) request {v}", op.id));
                    }
                }
                None => out.push(format!("{what} ({}) takes no body", op.id)),
            }
        }
        match self.response_schema(&op, status) {
            None => out.push(format!(
                "{what} ({}) status {status} is not declared",
                op.id
            )),
            Some(None) if !response.is_null() => out.push(format!(
                "{what} ({}) status {status} has a body the spec does not declare: {response}",
                op.id
            )),
            Some(None) => {}
            Some(Some(_)) if response.is_null() => {
                out.push(format!("{what} ({}) status {status} has no body", op.id))
            }
            Some(Some(s)) => {
                for x in self.validate(&s, response, Dir::Response, allow) {
                    out.push(format!("{what} ({}) {status} response {x}", op.id));
                }
            }
        }
        out
    }

    /// A PUT or DELETE of a load balancer's probe or rule on its own path (scaleset's extension:
    /// Microsoft's specs define these children only as members of the parent, with GET alone on
    /// their path): the bodies sent and returned against the child's definition `def` in
    /// `lb_file` (`Probe`, `LoadBalancingRule`, see [`lb_child_write`]), an error against
    /// Azure's `{"error":{"code","message"}}`.
    pub fn check_lb_child(
        &self,
        lb_file: &str,
        def: &str,
        (method, path): (&str, &str),
        request: Option<&Value>,
        status: u16,
        response: &Value,
    ) -> Vec<String> {
        let at = self
            .resolve(Path::new(lb_file), &format!("#/definitions/{def}"))
            .unwrap_or_else(|| panic!("{def} is not defined in {lb_file}"));
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut out = Vec::new();
        if let Some(b) = request {
            for x in self.validate(&at, b, Dir::Request, &|_| false) {
                out.push(format!("{what} request {x}"));
            }
        }
        let success = (200..300).contains(&status);
        let azure_error =
            response["error"]["code"].is_string() && response["error"]["message"].is_string();
        if success && !response.is_null() {
            for x in self.validate(&at, response, Dir::Response, &|_| false) {
                out.push(format!("{what} {status} response {x}"));
            }
        } else if !(success || azure_error) {
            out.push(format!(
                "{what}: {status} without Azure's error shape: {response}"
            ));
        }
        out
    }

    /// Checks an ARM template (`scaleset export azure`'s): each resource body against its spec
    /// (as a PUT request body), api-versions those of the specs, and every resourceId()
    /// pointing at a resource the template defines.
    pub fn check_arm_template(&self, t: &Value) -> Vec<String> {
        let specs = self;
        const COMPUTE: &str =
            "compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01";
        const NETWORK: &str = "network/resource-manager/Microsoft.Network/stable/2024-05-01";
        let spec_for = |ty: &str| -> Option<(String, &str)> {
            let (dir, file, version) = match ty {
                "Microsoft.Compute/virtualMachineScaleSets" => {
                    (COMPUTE, "virtualMachineScaleSet.json", "2024-11-01")
                }
                "Microsoft.Network/loadBalancers" => (NETWORK, "loadBalancer.json", "2024-05-01"),
                "Microsoft.Network/virtualNetworks" => {
                    (NETWORK, "virtualNetwork.json", "2024-05-01")
                }
                "Microsoft.Network/networkSecurityGroups" => {
                    (NETWORK, "networkSecurityGroup.json", "2024-05-01")
                }
                "Microsoft.Network/publicIPAddresses" => {
                    (NETWORK, "publicIpAddress.json", "2024-05-01")
                }
                _ => return None,
            };
            Some((format!("{dir}/{file}"), version))
        };
        let mut out = Vec::new();
        let resources = t["resources"].as_array().unwrap();
        let defined: Vec<(String, String)> = resources
            .iter()
            .map(|r| {
                (
                    r["type"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for r in resources {
            let ty = r["type"].as_str().unwrap();
            let name = r["name"].as_str().unwrap();
            let Some((file, version)) = spec_for(ty) else {
                // Storage's spec is not among the shared specs.
                if ty != "Microsoft.Storage/storageAccounts" {
                    out.push(format!("{ty}: no spec to check it against"));
                }
                continue;
            };
            if r["apiVersion"] != version {
                out.push(format!(
                    "{ty} {name}: apiVersion {} is not the spec's {version}",
                    r["apiVersion"]
                ));
            }
            let path = format!("/subscriptions/s/resourceGroups/rg/providers/{ty}/{name}");
            let op = specs.operation(&[&file], "PUT", &path).unwrap();
            let schema = specs.request_schema(&op).unwrap();
            let mut body = r.clone();
            // Template-only keys, not part of the resource body.
            for k in ["apiVersion", "dependsOn", "condition", "copy", "comments"] {
                body.as_object_mut().unwrap().remove(k);
            }
            for v in specs.validate(&schema, &body, Dir::Request, &|_| false) {
                out.push(format!("{ty} {name}: {v}"));
            }
        }
        let mut refs = Vec::new();
        resource_id_refs(&t["resources"], &mut refs);
        resource_id_refs(&t["outputs"], &mut refs);
        for (ty, names) in refs {
            // A child (loadBalancers/probes, 'lb', 'p') is defined by its parent resource.
            let parent: Vec<&str> = ty.split('/').take(2).collect();
            let parent = parent.join("/");
            if !defined.iter().any(|(t, n)| *t == parent && *n == names[0]) {
                out.push(format!(
                    "resourceId('{ty}', {names:?}) names no resource of the template"
                ));
            }
        }
        out
    }

    /// The property names the model at `path` (property names from `at`) declares, inherited
    /// ones included.
    pub fn declared_members(&self, at: &At, path: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let cx = Cx {
            specs: self,
            dir: Dir::Request,
            allow: &|_| false,
            out: &mut out,
        };
        let mut cur = cx.deref(&at.file, &at.schema).expect("schema resolves");
        for part in path {
            let mut m = Model::default();
            cx.model(&cur, &mut m, 0);
            let (_, p) = m
                .props
                .into_iter()
                .find(|(n, _)| n == part)
                .unwrap_or_else(|| panic!("no property {part} on the way to {path:?}"));
            cur = cx.deref(&p.file, &p.schema).expect("schema resolves");
        }
        let mut m = Model::default();
        cx.model(&cur, &mut m, 0);
        m.props.into_iter().map(|(n, _)| n).collect()
    }

    fn deref(&self, file: &Path, v: &Value) -> At {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self.resolve(file, r).unwrap_or(At {
                file: file.to_path_buf(),
                schema: Value::Object(Default::default()),
            }),
            None => At {
                file: file.to_path_buf(),
                schema: v.clone(),
            },
        }
    }

    /// Validates `v` against `at`. Violations are "path: what", `allow(path)` lets named
    /// undeclared properties through (documented extensions).
    pub fn validate(
        &self,
        at: &At,
        v: &Value,
        dir: Dir,
        allow: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut cx = Cx {
            specs: self,
            dir,
            allow,
            out: &mut out,
        };
        cx.check(&at.file, &at.schema, v, "$");
        out
    }
}

struct Cx<'a> {
    specs: &'a Specs,
    dir: Dir,
    allow: &'a dyn Fn(&str) -> bool,
    out: &'a mut Vec<String>,
}

/// The declared shape of an object model: its own and inherited (`allOf`) properties.
#[derive(Default)]
struct Model {
    props: Vec<(String, At)>,
    required: BTreeSet<String>,
    additional: Option<At>,
    closed: bool,
    declares: bool,
    discriminator: Option<String>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_datetime(s: &str) -> bool {
    // 2024-01-02T03:04:05[.fff](Z|+hh:mm): the shape, not the calendar.
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let head = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    let tz = rest == "Z"
        || rest == "z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':');
    head && tz
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|c| c.is_ascii_hexdigit()))
}

impl Cx<'_> {
    fn bad(&mut self, path: &str, msg: String) {
        self.out.push(format!("{path}: {msg}"));
    }

    /// Follows `$ref` chains; the sibling keys of a `$ref` (readOnly, x-nullable) are kept.
    fn deref(&self, file: &Path, s: &Value) -> Option<At> {
        let mut at = At {
            file: file.to_path_buf(),
            schema: s.clone(),
        };
        let mut extra = serde_json::Map::new();
        for _ in 0..32 {
            let Some(r) = at.schema.get("$ref").and_then(Value::as_str) else {
                break;
            };
            if let Some(o) = at.schema.as_object() {
                for (k, v) in o {
                    if k != "$ref" {
                        extra.entry(k.clone()).or_insert(v.clone());
                    }
                }
            }
            let r = r.to_string();
            at = self.specs.resolve(&at.file, &r)?;
        }
        if let Some(o) = at.schema.as_object_mut() {
            for (k, v) in extra {
                if matches!(k.as_str(), "readOnly" | "x-nullable" | "x-ms-secret") {
                    o.insert(k, v);
                }
            }
        }
        Some(at)
    }

    fn model(&self, at: &At, m: &mut Model, depth: usize) {
        if depth > 16 {
            return;
        }
        let s = &at.schema;
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            m.declares = true;
            for (k, p) in props {
                if !m.props.iter().any(|(n, _)| n == k) {
                    m.props.push((
                        k.clone(),
                        At {
                            file: at.file.clone(),
                            schema: p.clone(),
                        },
                    ));
                }
            }
        }
        for r in s["required"].as_array().into_iter().flatten() {
            if let Some(r) = r.as_str() {
                m.required.insert(r.to_string());
            }
        }
        match s.get("additionalProperties") {
            Some(Value::Bool(false)) => m.closed = true,
            Some(Value::Bool(true)) => {
                m.additional = Some(At {
                    file: at.file.clone(),
                    schema: Value::Object(Default::default()),
                })
            }
            Some(a @ Value::Object(_)) => {
                m.additional = Some(At {
                    file: at.file.clone(),
                    schema: a.clone(),
                })
            }
            _ => {}
        }
        if let Some(d) = s.get("discriminator").and_then(Value::as_str) {
            m.discriminator = Some(d.to_string());
        }
        for part in s["allOf"].as_array().into_iter().flatten() {
            match self.deref(&at.file, part) {
                Some(p) => self.model(&p, m, depth + 1),
                // An unknown parent: anything may be declared there.
                None => {
                    m.additional = m.additional.take().or(Some(At {
                        file: at.file.clone(),
                        schema: Value::Object(Default::default()),
                    }))
                }
            }
        }
    }

    /// For a polymorphic base, the definition in the same file whose discriminator value matches.
    fn subtype(&self, at: &At, prop: &str, v: &Value) -> Option<At> {
        let want = v.get(prop)?.as_str()?;
        let doc = self.specs.file(&at.file)?;
        for (name, def) in doc["definitions"].as_object()? {
            let val = def
                .get("x-ms-discriminator-value")
                .and_then(Value::as_str)
                .unwrap_or(name);
            if val == want && def.get("allOf").is_some() {
                return Some(At {
                    file: at.file.clone(),
                    schema: def.clone(),
                });
            }
        }
        None
    }

    fn check(&mut self, file: &Path, schema: &Value, v: &Value, path: &str) {
        let Some(at) = self.deref(file, schema) else {
            return;
        };
        let s = &at.schema;
        if self.dir == Dir::Request && s["readOnly"] == true {
            return;
        }
        if self.dir == Dir::Response && s["x-ms-secret"] == true {
            self.bad(
                path,
                "a secret (x-ms-secret) is returned in a response".into(),
            );
            return;
        }
        if v.is_null() {
            if s["x-nullable"] != true {
                self.bad(path, "null where the spec has no x-nullable".into());
            }
            return;
        }
        let declared = s.get("type").and_then(Value::as_str).or_else(|| {
            (s.get("properties").is_some() || s.get("allOf").is_some()).then_some("object")
        });
        if let Some(t) = declared {
            let got = type_name(v);
            let ok = got == t || (t == "number" && got == "integer");
            if !ok {
                self.bad(path, format!("expected {t}, got {got} {v}"));
                return;
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            let hit = e.iter().any(|x| match (x.as_str(), v.as_str()) {
                (Some(a), Some(b)) if self.dir == Dir::Request => a.eq_ignore_ascii_case(b),
                _ => x == v,
            });
            if !hit {
                self.bad(
                    path,
                    format!("{v} is not one of {}", Value::Array(e.clone())),
                );
            }
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    self.bad(path, format!("{n} is below minimum {min}"));
                }
            }
            if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    self.bad(path, format!("{n} is above maximum {max}"));
                }
            }
        }
        match (s.get("format").and_then(Value::as_str), v) {
            (Some("int32"), Value::Number(n))
                if n.as_i64().and_then(|i| i32::try_from(i).ok()).is_none() =>
            {
                self.bad(path, format!("{n} is not an int32"))
            }
            (Some("int64"), Value::Number(n)) if n.as_i64().is_none() => {
                self.bad(path, format!("{n} is not an int64"))
            }
            (Some("date-time"), Value::String(t)) if !is_datetime(t) => {
                self.bad(path, format!("'{t}' is not an RFC 3339 date-time"))
            }
            (Some("uuid"), Value::String(t)) if !is_uuid(t) => {
                self.bad(path, format!("'{t}' is not a uuid"))
            }
            (Some("duration"), Value::String(t)) if !t.starts_with('P') => {
                self.bad(path, format!("'{t}' is not an ISO 8601 duration"))
            }
            (Some("arm-id"), Value::String(t)) if !t.starts_with('/') => {
                self.bad(path, format!("'{t}' is not an ARM resource id"))
            }
            _ => {}
        }
        if let (Some(max), Some(t)) = (s.get("maxLength").and_then(Value::as_u64), v.as_str()) {
            if t.chars().count() as u64 > max {
                self.bad(path, format!("longer than maxLength {max}"));
            }
        }
        if let Value::Array(items) = v {
            if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    self.bad(path, format!("fewer than minItems {min}"));
                }
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    self.check(&at.file, item, x, &format!("{path}[{i}]"));
                }
            }
        }
        if let Value::Object(o) = v {
            let mut m = Model::default();
            self.model(&at, &mut m, 0);
            if let Some(d) = m.discriminator.clone() {
                if let Some(sub) = self.subtype(&at, &d, v) {
                    if sub.schema != at.schema {
                        let mut sm = Model::default();
                        self.model(&sub, &mut sm, 0);
                        m = sm;
                    }
                }
            }
            for r in &m.required {
                let ro = m
                    .props
                    .iter()
                    .find(|(n, _)| n == r)
                    .and_then(|(_, p)| self.deref(&p.file, &p.schema))
                    .is_some_and(|p| p.schema["readOnly"] == true);
                // A read-only required property is the service's to fill, not the client's.
                let optional_here = ro && self.dir == Dir::Request;
                if !o.contains_key(r) && !optional_here {
                    self.bad(path, format!("required property '{r}' is missing"));
                }
            }
            for (k, x) in o {
                let sub = format!("{path}.{k}");
                if let Some((_, p)) = m.props.iter().find(|(n, _)| n == k) {
                    let p = p.clone();
                    self.check(&p.file, &p.schema, x, &sub);
                } else if let Some(a) = m.additional.clone() {
                    self.check(&a.file, &a.schema, x, &sub);
                } else if (m.closed || m.declares) && !(self.allow)(&sub) {
                    self.bad(&sub, "not declared by the spec".into());
                }
            }
        }
    }
}

/// Every `[resourceId('type', 'name', ...)]` in the template, anywhere.
pub fn resource_id_refs(v: &Value, out: &mut Vec<(String, Vec<String>)>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(i) = rest.find("resourceId(") {
                rest = &rest[i + "resourceId(".len()..];
                let end = rest.find(')').unwrap_or(rest.len());
                let args: Vec<String> = rest[..end]
                    .split(',')
                    .map(|a| a.trim().trim_matches('\'').to_string())
                    .collect();
                out.push((args[0].clone(), args[1..].to_vec()));
            }
        }
        Value::Array(a) => a.iter().for_each(|x| resource_id_refs(x, out)),
        Value::Object(o) => o.values().for_each(|x| resource_id_refs(x, out)),
        _ => {}
    }
}

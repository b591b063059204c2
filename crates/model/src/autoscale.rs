//! Azure Monitor autoscale settings (`Microsoft.Insights/autoscalesettings`, api-version
//! 2022-10-01): parse and validate an ARM body into an [`AutoscaleSetting`], render it back.
//! Pure; the evaluation (which profile, which rule fires, cooldown, flapping) is
//! `plan::autoscale::decide`.
//!
//! Public API:
//! - [`parse`]: a PUT body, or a GET body sent back, into the typed setting (or Azure's error).
//! - [`apply_patch`]: a PATCH body (`{tags, properties}`, JSON merge patch) onto a stored
//!   setting, validated like a PUT.
//! - [`render`]: the typed setting as the ARM resource a GET returns.
//! - [`resource_id`], [`RESOURCE_TYPE`]: the id and type Azure returns.
//!
//! Validation follows the spec and Azure's documented limits: 1–20 profiles, at most 10 rules a
//! profile, capacities as strings (JSON integers are accepted too) within 0–1000 with
//! minimum ≤ default ≤ maximum, timeGrain 1 min–12 h, timeWindow 5 min–12 h and not shorter than
//! timeGrain, cooldown 1 min–1 week, scaleAction.value ≥ 1 (default "1") and, for ChangeCount, at
//! most maximum − minimum (Azure's `InvalidActionValue`), recurrence frequency `Week`, hours
//! 0–23, minutes 0–59, days `Sunday`…`Saturday` or .NET's day numbers `"0"`…`"6"` (Microsoft's
//! example sends `"1"`, Monday), a fixedDate that ends after it starts and spans ≤ 365 days, at
//! most 15 tags. Member names match case-insensitively (Azure's docs send `"Dimensions"`);
//! members the spec does not declare are refused, as `vmss` does.
//!
//! Stored and returned but not acted on: `notifications`, `predictiveAutoscalePolicy`,
//! `targetResourceLocation`, `metricNamespace`, `metricResourceLocation`.
//! Refused (they would silently do nothing or something undocumented): non-empty
//! `dimensions` (local metrics have no dimensions), scale type `ServiceAllowedNextValue`,
//! direction `None` with a type other than `ExactCount`, a profile with both `fixedDate` and
//! `recurrence` (the spec says each is ignored if the other is set), time-zone names
//! `timezone::TimeZone` cannot evaluate, and a `targetResourceUri` that is not a scale set.
use crate::ids::ResourceId;
use crate::timezone::{self, TimeZone};
use crate::vmss::{format_iso8601_duration, merge_patch, parse_iso8601_duration, MAX_CAPACITY};
use crate::ModelError;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub const RESOURCE_TYPE: &str = "Microsoft.Insights/autoscaleSettings";
pub const MAX_PROFILES: usize = 20;
pub const MAX_RULES_PER_PROFILE: usize = 10;
pub const MAX_TAGS: usize = 15;
/// A fixedDate profile spans at most this long (docs: "can't exceed 365 days").
pub const MAX_FIXED_DATE_SECS: i64 = 365 * 86_400;

/// Enums whose ARM spelling is the variant name.
macro_rules! arm_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($v),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => stringify!($v)),+ }
            }
        }
    };
}

arm_enum!(
    /// How one grain's samples from all instances are combined.
    Statistic { Average, Min, Max, Sum, Count }
);
arm_enum!(
    /// How the per-grain values in the time window are combined.
    TimeAggregation { Average, Minimum, Maximum, Total, Count, Last }
);
arm_enum!(Operator {
    Equals,
    NotEquals,
    GreaterThan,
    GreaterThanOrEqual,
    LessThan,
    LessThanOrEqual
});
arm_enum!(Direction {
    None,
    Increase,
    Decrease
});
arm_enum!(ScaleType {
    ChangeCount,
    PercentChangeCount,
    ExactCount
});
arm_enum!(PredictiveMode {
    Disabled,
    ForecastOnly,
    Enabled
});

/// A validated autoscale setting.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleSetting {
    pub location: String,
    pub tags: BTreeMap<String, String>,
    /// Spec default: false.
    pub enabled: bool,
    /// The scale set this setting scales.
    pub target: ResourceId,
    pub target_resource_location: Option<String>,
    pub profiles: Vec<Profile>,
    pub notifications: Vec<Notification>,
    pub predictive: Option<PredictivePolicy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub capacity: Capacity,
    pub rules: Vec<Rule>,
    pub schedule: Schedule,
}

/// Instance counts (Azure's strings, parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub minimum: u32,
    pub maximum: u32,
    /// Used when metrics are missing and the current count is below it.
    pub default: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Neither fixedDate nor recurrence: used when no scheduled profile applies.
    Default,
    FixedDate(FixedDate),
    Recurrence(Recurrence),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FixedDate {
    pub time_zone: Option<TimeZone>,
    /// As given (returned on GET).
    pub start: String,
    pub end: String,
    /// The window `[start_utc, end_utc)`, unix seconds.
    pub start_utc: i64,
    pub end_utc: i64,
}

/// A weekly start time: the profile starts at every (day, hour, minute) combination and stays
/// until another recurring profile starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Recurrence {
    pub time_zone: TimeZone,
    pub days: Vec<Day>,
    pub hours: Vec<u8>,
    pub minutes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    /// 0 = Sunday … 6 = Saturday.
    pub weekday: u8,
    /// As given (`"Monday"`, `"1"`).
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub metric_trigger: MetricTrigger,
    pub scale_action: ScaleAction,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricTrigger {
    pub metric_name: String,
    pub metric_namespace: Option<String>,
    /// A valid ARM resource id, as given.
    pub metric_resource_uri: String,
    pub metric_resource_location: Option<String>,
    pub time_grain_secs: u64,
    pub statistic: Statistic,
    pub time_window_secs: u64,
    pub time_aggregation: TimeAggregation,
    pub operator: Operator,
    pub threshold: f64,
    pub divide_per_instance: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleAction {
    pub direction: Direction,
    pub kind: ScaleType,
    /// Instances (ChangeCount, ExactCount) or percent (PercentChangeCount); ≥ 1.
    pub value: u32,
    pub cooldown_secs: u64,
}

/// Stored and returned; nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub email: Option<Email>,
    pub webhooks: Vec<Webhook>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub send_to_subscription_administrator: bool,
    pub send_to_subscription_co_administrators: bool,
    pub custom_emails: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub service_uri: String,
    pub properties: BTreeMap<String, String>,
}

/// Stored and returned; no forecasting happens locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredictivePolicy {
    pub scale_mode: PredictiveMode,
    pub scale_look_ahead_secs: Option<u64>,
}

// Members the spec declares, per object type (space-separated).
const ROOT: &str = "id name type location tags systemData properties";
const PROPS: &str =
    "profiles notifications enabled predictiveAutoscalePolicy name targetResourceUri targetResourceLocation";
const PROFILE: &str = "name capacity rules fixedDate recurrence";
const CAPACITY: &str = "minimum maximum default";
const RULE: &str = "metricTrigger scaleAction";
const TRIGGER: &str = "metricName metricNamespace metricResourceUri metricResourceLocation timeGrain statistic timeWindow timeAggregation operator threshold dimensions dividePerInstance";
const ACTION: &str = "direction type value cooldown";
const FIXED: &str = "timeZone start end";
const RECURRENCE: &str = "frequency schedule";
const SCHEDULE: &str = "timeZone days hours minutes";
const NOTIFICATION: &str = "operation email webhooks";
const EMAIL: &str =
    "sendToSubscriptionAdministrator sendToSubscriptionCoAdministrators customEmails";
const WEBHOOK: &str = "serviceUri properties";
const PREDICTIVE: &str = "scaleMode scaleLookAheadTime";
const PATCH: &str = "tags properties";

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Parses and validates an autoscale setting resource body (PUT, or a GET body sent back).
pub fn parse(body: &Value) -> Result<AutoscaleSetting, ModelError> {
    if !body.is_object() {
        return Err(ModelError::new(
            "InvalidRequestContent",
            "The request content must be a JSON object.",
        ));
    }
    let root = Obj::new(body, String::new(), "AutoscaleSettingResource", ROOT)?;
    let location = root.str_opt("location")?.ok_or_else(|| {
        ModelError::new(
            "LocationRequired",
            "The location property is required for this definition.",
        )
    })?;
    let tags = tags(&root)?;
    let props = root.obj_req("properties", "AutoscaleSetting", PROPS)?;
    Ok(AutoscaleSetting {
        location: location.to_string(),
        tags,
        enabled: props.bool_or("enabled", false)?,
        target: target(&props)?,
        target_resource_location: props.str_opt("targetResourceLocation")?.map(String::from),
        profiles: profiles(&props)?,
        notifications: props
            .list("notifications")?
            .iter()
            .enumerate()
            .map(|(i, n)| notification(n, props.item("notifications", i)))
            .collect::<Result<_, _>>()?,
        predictive: props
            .obj(
                "predictiveAutoscalePolicy",
                "PredictiveAutoscalePolicy",
                PREDICTIVE,
            )?
            .map(|p| predictive(&p))
            .transpose()?,
    })
}

/// Applies a PATCH body to a stored setting and validates the result: `properties` merge as RFC
/// 7386 says (lists such as `profiles` are replaced whole); `tags` replace the tags, as ARM's
/// PATCH convention has it.
pub fn apply_patch(
    current: &AutoscaleSetting,
    patch: &Value,
) -> Result<AutoscaleSetting, ModelError> {
    if !patch.is_object() {
        return Err(ModelError::new(
            "InvalidRequestContent",
            "The request content must be a JSON object.",
        ));
    }
    Obj::new(patch, String::new(), "AutoscaleSettingResourcePatch", PATCH)?;
    let mut body = render(current, "", "");
    if let Some(o) = body.as_object_mut() {
        for k in ["id", "name", "type"] {
            o.remove(k);
        }
        if patch.get("tags").is_some_and(|t| !t.is_null()) {
            o.remove("tags");
        }
    }
    merge_patch(&mut body, patch);
    parse(&body)
}

/// The id Azure returns (its provider segment is lower case).
pub fn resource_id(subscription: &str, resource_group: &str, name: &str) -> String {
    format!("/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/microsoft.insights/autoscalesettings/{name}")
}

/// The ARM resource for GET/PUT responses.
pub fn render(s: &AutoscaleSetting, id: &str, name: &str) -> Value {
    let mut props = json!({
        "profiles": s.profiles.iter().map(render_profile).collect::<Vec<_>>(),
        "enabled": s.enabled,
        "name": name,
        "targetResourceUri": s.target.to_string(),
        "notifications": s.notifications.iter().map(render_notification).collect::<Vec<_>>(),
    });
    if let Some(l) = &s.target_resource_location {
        props["targetResourceLocation"] = json!(l);
    }
    if let Some(p) = &s.predictive {
        props["predictiveAutoscalePolicy"] = json!({"scaleMode": p.scale_mode.as_str()});
        if let Some(t) = p.scale_look_ahead_secs {
            props["predictiveAutoscalePolicy"]["scaleLookAheadTime"] =
                json!(format_iso8601_duration(t));
        }
    }
    json!({
        "id": id,
        "name": name,
        "type": RESOURCE_TYPE,
        "location": s.location,
        "tags": s.tags,
        "properties": props,
    })
}

fn render_profile(p: &Profile) -> Value {
    let c = &p.capacity;
    let mut v = json!({
        "name": p.name,
        "capacity": {
            "minimum": c.minimum.to_string(),
            "maximum": c.maximum.to_string(),
            "default": c.default.to_string(),
        },
        "rules": p.rules.iter().map(render_rule).collect::<Vec<_>>(),
    });
    match &p.schedule {
        Schedule::Default => {}
        Schedule::FixedDate(f) => {
            v["fixedDate"] = json!({"start": f.start, "end": f.end});
            if let Some(z) = &f.time_zone {
                v["fixedDate"]["timeZone"] = json!(z.name);
            }
        }
        Schedule::Recurrence(r) => {
            v["recurrence"] = json!({"frequency": "Week", "schedule": {
                "timeZone": r.time_zone.name,
                "days": r.days.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
                "hours": r.hours,
                "minutes": r.minutes,
            }});
        }
    }
    v
}

fn render_rule(r: &Rule) -> Value {
    let t = &r.metric_trigger;
    let a = &r.scale_action;
    let mut trigger = json!({
        "metricName": t.metric_name,
        "metricResourceUri": t.metric_resource_uri,
        "timeGrain": format_iso8601_duration(t.time_grain_secs),
        "statistic": t.statistic.as_str(),
        "timeWindow": format_iso8601_duration(t.time_window_secs),
        "timeAggregation": t.time_aggregation.as_str(),
        "operator": t.operator.as_str(),
        "threshold": t.threshold,
        "dividePerInstance": t.divide_per_instance,
    });
    for (k, v) in [
        ("metricNamespace", &t.metric_namespace),
        ("metricResourceLocation", &t.metric_resource_location),
    ] {
        if let Some(v) = v {
            trigger[k] = json!(v);
        }
    }
    json!({
        "metricTrigger": trigger,
        "scaleAction": {
            "direction": a.direction.as_str(),
            "type": a.kind.as_str(),
            "value": a.value.to_string(),
            "cooldown": format_iso8601_duration(a.cooldown_secs),
        },
    })
}

fn render_notification(n: &Notification) -> Value {
    let mut v = json!({
        "operation": "Scale",
        "webhooks": n.webhooks.iter().map(|w| json!({"serviceUri": w.service_uri, "properties": w.properties})).collect::<Vec<_>>(),
    });
    if let Some(e) = &n.email {
        v["email"] = json!({
            "sendToSubscriptionAdministrator": e.send_to_subscription_administrator,
            "sendToSubscriptionCoAdministrators": e.send_to_subscription_co_administrators,
            "customEmails": e.custom_emails,
        });
    }
    v
}

fn tags(root: &Obj) -> Result<BTreeMap<String, String>, ModelError> {
    let Some(t) = root.get("tags") else {
        return Ok(BTreeMap::new());
    };
    let map = t
        .as_object()
        .ok_or_else(|| ModelError::invalid("The value of parameter 'tags' must be an object."))?;
    if map.len() > MAX_TAGS {
        return Err(ModelError::invalid(format!(
            "A resource can have at most {MAX_TAGS} tags; got {}.",
            map.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let v = v.as_str().ok_or_else(|| {
            ModelError::invalid(format!("The value of tag '{k}' must be a string, got {v}."))
        })?;
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(ModelError::invalid(format!(
                "Tag '{k}' is invalid: a tag name has 1–128 characters and its value at most 256."
            )));
        }
        out.insert(k.clone(), v.to_string());
    }
    Ok(out)
}

/// `targetResourceUri`: a scale set, the only resource that scales here.
fn target(props: &Obj) -> Result<ResourceId, ModelError> {
    let uri = props.str_req("targetResourceUri")?;
    let id = ResourceId::parse(uri)?;
    if !id.is("Microsoft.Compute", "virtualMachineScaleSets") || id.child.is_some() {
        return Err(ModelError::invalid(format!("targetResourceUri '{uri}' must be a virtual machine scale set (…/providers/Microsoft.Compute/virtualMachineScaleSets/{{name}}): only scale sets are autoscaled locally.")));
    }
    Ok(id)
}

fn profiles(props: &Obj) -> Result<Vec<Profile>, ModelError> {
    let list = props.list_req("profiles")?;
    if list.is_empty() || list.len() > MAX_PROFILES {
        return Err(ModelError::invalid(format!(
            "An autoscale setting has 1 to {MAX_PROFILES} profiles; got {}.",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, p)| profile(p, props.item("profiles", i)))
        .collect()
}

fn profile(v: &Value, path: String) -> Result<Profile, ModelError> {
    let o = Obj::new(v, path, "AutoscaleProfile", PROFILE)?;
    let name = o.str_req("name")?.to_string();
    let capacity = capacity(&o.obj_req("capacity", "ScaleCapacity", CAPACITY)?)?;
    let list = o.list_req("rules")?;
    if list.len() > MAX_RULES_PER_PROFILE {
        return Err(ModelError::invalid(format!(
            "Profile '{name}' has {} rules; a profile has at most {MAX_RULES_PER_PROFILE}.",
            list.len()
        )));
    }
    let rules = list
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r, o.item("rules", i)))
        .collect::<Result<Vec<_>, _>>()?;
    check_action_values(&capacity, &rules)?;
    let schedule = match (
        o.obj("fixedDate", "TimeWindow", FIXED)?,
        o.obj("recurrence", "Recurrence", RECURRENCE)?,
    ) {
        (Some(_), Some(_)) => return Err(ModelError::invalid(format!("Profile '{name}' has both fixedDate and recurrence; a profile is either a fixed-date or a recurring profile."))),
        (Some(f), None) => Schedule::FixedDate(fixed_date(&f)?),
        (None, Some(r)) => Schedule::Recurrence(recurrence(&r)?),
        (None, None) => Schedule::Default,
    };
    Ok(Profile {
        name,
        capacity,
        rules,
        schedule,
    })
}

fn capacity(o: &Obj) -> Result<Capacity, ModelError> {
    let count = |k: &str| -> Result<u32, ModelError> {
        let field = o.at(k);
        let n = count_value(o.req(k)?, &field)?;
        if n > MAX_CAPACITY {
            return Err(ModelError::out_of_range(&field, n, 0, MAX_CAPACITY as i64));
        }
        Ok(n as u32)
    };
    let c = Capacity {
        minimum: count("minimum")?,
        maximum: count("maximum")?,
        default: count("default")?,
    };
    // Azure's wording (BadRequest) for the minimum/default case; the others follow it.
    let bad = |what: &str, v: u32, other: &str, o: u32, fix: &str| {
        ModelError::new("BadRequest", format!("The {what} capacity value '{v}' that you specified in the autoscale setting is greater than the {other} capacity of '{o}'. Enter a {fix}."))
    };
    if c.minimum > c.maximum {
        return Err(bad(
            "minimum",
            c.minimum,
            "maximum",
            c.maximum,
            &format!("minimum capacity less than or equal to '{}'", c.maximum),
        ));
    }
    if c.minimum > c.default {
        return Err(bad(
            "minimum",
            c.minimum,
            "default",
            c.default,
            &format!("minimum capacity less than or equal to '{}'", c.default),
        ));
    }
    if c.default > c.maximum {
        return Err(bad(
            "default",
            c.default,
            "maximum",
            c.maximum,
            &format!("default capacity less than or equal to '{}'", c.maximum),
        ));
    }
    Ok(c)
}

/// A count given as Azure's string ("3") or as a JSON integer.
fn count_value(v: &Value, field: &str) -> Result<u64, ModelError> {
    let n = match v {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    n.ok_or_else(|| {
        ModelError::invalid(format!(
            "The value of parameter '{field}' must be a whole number of instances as a string (\"2\"), got {v}."
        ))
    })
}

/// Azure refuses a ChangeCount larger than the profile's range (`InvalidActionValue`).
fn check_action_values(c: &Capacity, rules: &[Rule]) -> Result<(), ModelError> {
    let span = c.maximum - c.minimum;
    for r in rules {
        let a = &r.scale_action;
        if a.kind == ScaleType::ChangeCount && a.value > span {
            return Err(ModelError::new("InvalidActionValue", format!("The autoscale setting you provided has an invalid scale action value ('{}'). Specify a scale value less than or equal to the difference between the capacity maximum {} and the capacity minimum {}.", a.value, c.maximum, c.minimum)));
        }
    }
    Ok(())
}

fn rule(v: &Value, path: String) -> Result<Rule, ModelError> {
    let o = Obj::new(v, path, "ScaleRule", RULE)?;
    Ok(Rule {
        metric_trigger: trigger(&o.obj_req("metricTrigger", "MetricTrigger", TRIGGER)?)?,
        scale_action: action(&o.obj_req("scaleAction", "ScaleAction", ACTION)?)?,
    })
}

fn trigger(o: &Obj) -> Result<MetricTrigger, ModelError> {
    let uri = o.str_req("metricResourceUri")?;
    ResourceId::parse(uri)?;
    if !o.list("dimensions")?.is_empty() {
        return Err(ModelError::invalid(format!("{}: dimension filters are not available locally (local metrics have no dimensions); remove them.", o.at("dimensions"))));
    }
    let t = MetricTrigger {
        metric_name: o.str_req("metricName")?.to_string(),
        metric_namespace: o.str_opt("metricNamespace")?.map(String::from),
        metric_resource_uri: uri.to_string(),
        metric_resource_location: o.str_opt("metricResourceLocation")?.map(String::from),
        time_grain_secs: o.duration("timeGrain", 60, 43_200)?,
        statistic: o.enum_req("statistic", Statistic::ALL, |s| s.as_str())?,
        time_window_secs: o.duration("timeWindow", 300, 43_200)?,
        time_aggregation: o.enum_req("timeAggregation", TimeAggregation::ALL, |s| s.as_str())?,
        operator: o.enum_req("operator", Operator::ALL, |s| s.as_str())?,
        threshold: o.f64_req("threshold")?,
        divide_per_instance: o.bool_or("dividePerInstance", false)?,
    };
    if t.time_window_secs < t.time_grain_secs {
        return Err(ModelError::invalid(format!(
            "{} must not be shorter than timeGrain: the window has to hold at least one grain.",
            o.at("timeWindow")
        )));
    }
    Ok(t)
}

fn action(o: &Obj) -> Result<ScaleAction, ModelError> {
    let direction = o.enum_req("direction", Direction::ALL, |d| d.as_str())?;
    if o.str_opt("type")?
        .is_some_and(|t| t.eq_ignore_ascii_case("ServiceAllowedNextValue"))
    {
        return Err(ModelError::invalid(format!("{}: ServiceAllowedNextValue is not available locally (Azure does not document what it does); use ChangeCount, PercentChangeCount or ExactCount.", o.at("type"))));
    }
    let kind = o.enum_req("type", ScaleType::ALL, |t| t.as_str())?;
    if direction == Direction::None && kind != ScaleType::ExactCount {
        return Err(ModelError::invalid(format!("{}: direction None only goes with type ExactCount (scale to a count); use Increase or Decrease with {}.", o.at("direction"), kind.as_str())));
    }
    let value = match o.get("value") {
        None => 1,
        Some(v) => count_value(v, &o.at("value"))?,
    };
    if value == 0 || value > u32::MAX as u64 {
        return Err(ModelError::invalid(format!(
            "The value {value} of parameter '{}' is out of range: it must be 1 or greater.",
            o.at("value")
        )));
    }
    Ok(ScaleAction {
        direction,
        kind,
        value: value as u32,
        cooldown_secs: o.duration("cooldown", 60, 7 * 86_400)?,
    })
}

fn fixed_date(o: &Obj) -> Result<FixedDate, ModelError> {
    let time_zone = o
        .str_opt("timeZone")?
        .map(|z| zone(z, &o.at("timeZone")))
        .transpose()?;
    let instant = |k: &str| -> Result<(String, i64), ModelError> {
        let s = o.str_req(k)?;
        let dt = timezone::parse_datetime(s).ok_or_else(|| {
            ModelError::invalid(format!("The value '{s}' of parameter '{}' is not a valid ISO 8601 date-time (for example 2017-12-26T00:00:00).", o.at(k)))
        })?;
        // An explicit offset names the instant; otherwise (or `Z`, which az adds to every time
        // it sends) the wall clock is read in timeZone, as the spec describes timeZone.
        let utc = match dt.offset {
            Some(off) if off != 0 => dt.local - off,
            _ => time_zone.as_ref().map_or(dt.local, |z| z.to_utc(dt.local)),
        };
        Ok((s.to_string(), utc))
    };
    let (start, start_utc) = instant("start")?;
    let (end, end_utc) = instant("end")?;
    if end_utc <= start_utc {
        return Err(ModelError::invalid(format!(
            "{}: the end '{end}' must be after the start '{start}'.",
            o.path
        )));
    }
    if end_utc - start_utc > MAX_FIXED_DATE_SECS {
        return Err(ModelError::invalid(format!(
            "{}: the number of days between start and end can't exceed 365.",
            o.path
        )));
    }
    Ok(FixedDate {
        time_zone,
        start,
        end,
        start_utc,
        end_utc,
    })
}

fn recurrence(o: &Obj) -> Result<Recurrence, ModelError> {
    let freq = o.str_req("frequency")?;
    if !freq.eq_ignore_ascii_case("Week") {
        return Err(ModelError::invalid(format!("The value '{freq}' of parameter '{}' is not supported: the recurrence frequency must be Week (a daily schedule lists every day).", o.at("frequency"))));
    }
    let s = o.obj_req("schedule", "RecurrentSchedule", SCHEDULE)?;
    let time_zone = zone(s.str_req("timeZone")?, &s.at("timeZone"))?;
    let days = s
        .list_req("days")?
        .iter()
        .map(|d| day(d, &s.at("days")))
        .collect::<Result<Vec<_>, _>>()?;
    let hours = small_ints(&s, "hours", 23)?;
    let minutes = small_ints(&s, "minutes", 59)?;
    if days.is_empty() || hours.is_empty() || minutes.is_empty() {
        return Err(ModelError::invalid(format!(
            "{}: days, hours and minutes each need at least one value.",
            s.path
        )));
    }
    Ok(Recurrence {
        time_zone,
        days,
        hours,
        minutes,
    })
}

/// `Sunday`…`Saturday`, or .NET's DayOfWeek numbers as strings (`"1"` is Monday).
fn day(v: &Value, field: &str) -> Result<Day, ModelError> {
    let text = v.as_str().unwrap_or_default();
    let weekday = DAYS
        .iter()
        .position(|d| d.eq_ignore_ascii_case(text))
        .or_else(|| {
            matches!(text, "0" | "1" | "2" | "3" | "4" | "5" | "6")
                .then(|| text.parse().unwrap_or(0))
        })
        .ok_or_else(|| {
            ModelError::invalid(format!(
                "The value {v} of parameter '{field}' is not allowed. Allowed values are: {}.",
                DAYS.join(", ")
            ))
        })?;
    Ok(Day {
        weekday: weekday as u8,
        text: text.to_string(),
    })
}

fn small_ints(o: &Obj, key: &str, max: u8) -> Result<Vec<u8>, ModelError> {
    let field = o.at(key);
    o.list_req(key)?
        .iter()
        .map(|v| match v.as_i64() {
            Some(n) if (0..=max as i64).contains(&n) => Ok(n as u8),
            Some(n) => Err(ModelError::out_of_range(&field, n, 0, max as i64)),
            None => Err(ModelError::invalid(format!(
                "The values of parameter '{field}' must be integers, got {v}."
            ))),
        })
        .collect()
}

fn zone(name: &str, field: &str) -> Result<TimeZone, ModelError> {
    TimeZone::parse(name).ok_or_else(|| {
        ModelError::invalid(format!("The time zone '{name}' of parameter '{field}' is not supported locally. Use UTC, a fixed offset such as UTC+05:30, or a Windows time zone with one offset all year (India Standard Time, Tokyo Standard Time, …) or US or EU daylight saving (Pacific Standard Time, Eastern Standard Time, W. Europe Standard Time, GMT Standard Time, …)."))
    })
}

fn notification(v: &Value, path: String) -> Result<Notification, ModelError> {
    let o = Obj::new(v, path, "AutoscaleNotification", NOTIFICATION)?;
    let op = o.str_req("operation")?;
    if !op.eq_ignore_ascii_case("Scale") {
        return Err(ModelError::invalid(format!(
            "The value '{op}' of parameter '{}' is not allowed. Allowed values are: Scale.",
            o.at("operation")
        )));
    }
    let email = o
        .obj("email", "EmailNotification", EMAIL)?
        .map(|e| -> Result<Email, ModelError> {
            Ok(Email {
                send_to_subscription_administrator: e
                    .bool_or("sendToSubscriptionAdministrator", false)?,
                send_to_subscription_co_administrators: e
                    .bool_or("sendToSubscriptionCoAdministrators", false)?,
                custom_emails: e.strings("customEmails")?,
            })
        })
        .transpose()?;
    let webhooks = o
        .list("webhooks")?
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let w = Obj::new(w, o.item("webhooks", i), "WebhookNotification", WEBHOOK)?;
            Ok(Webhook {
                service_uri: w.str_req("serviceUri")?.to_string(),
                properties: w.string_map("properties")?,
            })
        })
        .collect::<Result<_, ModelError>>()?;
    Ok(Notification { email, webhooks })
}

fn predictive(o: &Obj) -> Result<PredictivePolicy, ModelError> {
    Ok(PredictivePolicy {
        scale_mode: o.enum_req("scaleMode", PredictiveMode::ALL, |m| m.as_str())?,
        scale_look_ahead_secs: match o.get("scaleLookAheadTime") {
            None => None,
            Some(_) => Some(o.duration("scaleLookAheadTime", 60, 3600)?),
        },
    })
}

/// A JSON object of the body with its path (for messages); members match case-insensitively.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// Refuses members that `members` (the spec's, space-separated) does not list.
    fn new(v: &'a Value, path: String, ty: &str, members: &str) -> Result<Self, ModelError> {
        let map = v.as_object().ok_or_else(|| {
            ModelError::invalid(format!(
                "The value of parameter '{path}' must be an object, got {v}."
            ))
        })?;
        if let Some(k) = map
            .keys()
            .find(|k| !members.split(' ').any(|m| m.eq_ignore_ascii_case(k)))
        {
            let at = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            return Err(ModelError::new("InvalidRequestContent", format!("The request content was invalid and could not be deserialized: Could not find member '{k}' on object of type '{ty}'. Path '{at}'.")));
        }
        Ok(Obj { map, path })
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn item(&self, key: &str, i: usize) -> String {
        format!("{}[{i}]", self.at(key))
    }

    /// The member, case-insensitively; JSON null counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    fn req(&self, key: &str) -> Result<&'a Value, ModelError> {
        self.get(key).ok_or_else(|| {
            let path = if self.path.is_empty() {
                "''".to_string()
            } else {
                format!("'{}'", self.path)
            };
            ModelError::new(
                "InvalidRequestContent",
                format!("Required property '{key}' not found in JSON. Path {path}."),
            )
        })
    }

    fn obj(&self, key: &str, ty: &str, members: &str) -> Result<Option<Obj<'a>>, ModelError> {
        self.get(key)
            .map(|v| Obj::new(v, self.at(key), ty, members))
            .transpose()
    }

    fn obj_req(&self, key: &str, ty: &str, members: &str) -> Result<Obj<'a>, ModelError> {
        Obj::new(self.req(key)?, self.at(key), ty, members)
    }

    fn type_error(&self, key: &str, what: &str, v: &Value) -> ModelError {
        ModelError::invalid(format!(
            "The value of parameter '{}' must be {what}, got {v}.",
            self.at(key)
        ))
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.type_error(key, "a string", v)),
        }
    }

    /// A required, non-empty string.
    fn str_req(&self, key: &str) -> Result<&'a str, ModelError> {
        match self.req(key)? {
            Value::String(s) if !s.is_empty() => Ok(s),
            v => Err(self.type_error(key, "a non-empty string", v)),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.type_error(key, "a boolean", v)),
        }
    }

    fn f64_req(&self, key: &str) -> Result<f64, ModelError> {
        let v = self.req(key)?;
        v.as_f64()
            .ok_or_else(|| self.type_error(key, "a number", v))
    }

    /// A list; absent is empty.
    fn list(&self, key: &str) -> Result<&'a [Value], ModelError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(self.type_error(key, "a list", v)),
        }
    }

    fn list_req(&self, key: &str) -> Result<&'a [Value], ModelError> {
        self.req(key)?;
        self.list(key)
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, ModelError> {
        self.list(key)?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| self.type_error(key, "a list of strings", v))
            })
            .collect()
    }

    fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(BTreeMap::new());
        };
        let m = v
            .as_object()
            .ok_or_else(|| self.type_error(key, "an object", v))?;
        m.iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| self.type_error(key, "an object of strings", v))
            })
            .collect()
    }

    /// A required ISO 8601 duration within `[lo, hi]` seconds.
    fn duration(&self, key: &str, lo: u64, hi: u64) -> Result<u64, ModelError> {
        let field = self.at(key);
        let s = match self.req(key)? {
            Value::String(s) => s,
            v => return Err(self.type_error(key, "an ISO 8601 duration string", v)),
        };
        let secs = parse_iso8601_duration(s).ok_or_else(|| {
            ModelError::invalid(format!("The value '{s}' of parameter '{field}' is not a valid ISO 8601 duration (for example PT1M, PT5M, PT1H)."))
        })?;
        if !(lo..=hi).contains(&secs) {
            return Err(ModelError::invalid(format!(
                "The value '{s}' of parameter '{field}' is out of range. It must be between {} and {}.",
                format_iso8601_duration(lo),
                format_iso8601_duration(hi)
            )));
        }
        Ok(secs)
    }

    fn enum_req<T: Copy>(
        &self,
        key: &str,
        all: &[T],
        name: fn(T) -> &'static str,
    ) -> Result<T, ModelError> {
        let s = match self.req(key)? {
            Value::String(s) => s,
            v => return Err(self.type_error(key, "a string", v)),
        };
        all.iter()
            .copied()
            .find(|t| name(*t).eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|t| name(*t)).collect();
                ModelError::invalid(format!(
                    "The value '{s}' of parameter '{}' is not allowed. Allowed values are: {}.",
                    self.at(key),
                    names.join(", ")
                ))
            })
    }
}

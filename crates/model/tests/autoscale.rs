//! Autoscale settings: Microsoft's examples parse and render back; a table of refusals.
use model::autoscale::{
    self, Direction, Operator, ScaleType, Schedule, Statistic, TimeAggregation,
};
use serde_json::{json, Value};
use std::path::PathBuf;

const EXAMPLES: &str =
    "specs/azure-rest-api/specification/monitor/resource-manager/Microsoft.Insights/stable/2022-10-01/examples";

/// Microsoft's example files, `None` (after [`testkit::require`]) when the shared folder is absent.
fn examples() -> Option<Vec<(String, Value)>> {
    if !testkit::require(testkit::missing_shared(EXAMPLES)) {
        return None;
    }
    let dir: PathBuf = testkit::shared_dir().join(EXAMPLES);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 7, "{dir:?}");
    Some(out)
}

/// Drops nulls and reads every number as f64, so `85` and `85.0` compare equal.
fn norm(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), norm(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
        Value::Number(n) => json!(n.as_f64().unwrap()),
        v => v.clone(),
    }
}

#[test]
fn every_example_request_parses() {
    let Some(files) = examples() else { return };
    let mut puts = 0;
    for (name, ex) in &files {
        let params = &ex["parameters"];
        if let Some(body) = params.get("parameters") {
            let s = autoscale::parse(body).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(s.enabled, "{name}");
            puts += 1;
        }
        if let Some(patch) = params.get("autoscaleSettingResource") {
            let put = &files
                .iter()
                .find(|(n, _)| n == "createOrUpdateAutoscaleSetting.json")
                .unwrap()
                .1["parameters"]["parameters"];
            let base = autoscale::parse(put).unwrap();
            let s =
                autoscale::apply_patch(&base, patch).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(s.tags.len(), 1, "{name}: tags are replaced by the patch's");
            assert_eq!(s.location, "West US");
            puts += 1;
        }
    }
    assert_eq!(puts, 2, "the PUT and the PATCH examples");
}

/// The example's typed view, field by field.
#[test]
fn create_example_typed() {
    let Some(files) = examples() else { return };
    let ex = &files
        .iter()
        .find(|(n, _)| n == "createOrUpdateAutoscaleSetting.json")
        .unwrap()
        .1;
    let s = autoscale::parse(&ex["parameters"]["parameters"]).unwrap();
    assert_eq!(s.target.name, "testingsc");
    assert_eq!(s.profiles.len(), 2);
    let p = &s.profiles[0];
    assert_eq!(
        (
            p.name.as_str(),
            p.capacity.minimum,
            p.capacity.maximum,
            p.capacity.default
        ),
        ("adios", 1, 10, 1)
    );
    let r = &p.rules[1];
    let t = &r.metric_trigger;
    assert_eq!(
        (
            t.time_grain_secs,
            t.statistic,
            t.time_window_secs,
            t.time_aggregation,
            t.operator,
            t.threshold
        ),
        (
            120,
            Statistic::Average,
            300,
            TimeAggregation::Average,
            Operator::GreaterThan,
            15.0
        )
    );
    let a = r.scale_action;
    assert_eq!(
        (a.direction, a.kind, a.value, a.cooldown_secs),
        (Direction::Decrease, ScaleType::ChangeCount, 2, 360)
    );
    let Schedule::FixedDate(f) = &p.schedule else {
        panic!("fixed date")
    };
    assert_eq!(
        (f.start_utc, f.end_utc - f.start_utc),
        (1_425_564_000, 1800)
    );
    let Schedule::Recurrence(rc) = &s.profiles[1].schedule else {
        panic!("recurrence")
    };
    assert_eq!(
        (
            rc.days[0].weekday,
            rc.hours.as_slice(),
            rc.minutes.as_slice()
        ),
        (1, &[5u8][..], &[15u8][..])
    );
    assert_eq!(
        s.notifications[0].webhooks[0].service_uri,
        "http://myservice.com"
    );
}

/// Every example response body parses (a client may PUT back what it got) and renders back as
/// Azure returned it.
#[test]
fn example_responses_round_trip() {
    let Some(files) = examples() else { return };
    let mut n = 0;
    for (name, ex) in &files {
        for (code, resp) in ex["responses"].as_object().unwrap() {
            let Some(body) = resp.get("body") else {
                continue;
            };
            let items = match body.get("value") {
                Some(Value::Array(a)) => a.clone(),
                _ if body.get("properties").is_some() => vec![body.clone()],
                _ => continue,
            };
            for item in items {
                let s = autoscale::parse(&item).unwrap_or_else(|e| panic!("{name} {code}: {e:?}"));
                let back = autoscale::render(
                    &s,
                    item["id"].as_str().unwrap(),
                    item["name"].as_str().unwrap(),
                );
                assert_eq!(norm(&back), norm(&item), "{name} {code}");
                n += 1;
            }
        }
    }
    assert!(n >= 6, "{n} response bodies");
}

fn rule(dir: &str, kind: &str, value: &str) -> Value {
    json!({
        "metricTrigger": {
            "metricName": "Percentage CPU",
            "metricResourceUri": VMSS,
            "timeGrain": "PT1M", "statistic": "Average", "timeWindow": "PT5M",
            "timeAggregation": "Average", "operator": "GreaterThan", "threshold": 70
        },
        "scaleAction": {"direction": dir, "type": kind, "value": value, "cooldown": "PT5M"}
    })
}

const VMSS: &str =
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web";

fn setting(profile: Value) -> Value {
    json!({"location": "local", "properties": {"enabled": true, "targetResourceUri": VMSS, "profiles": [profile]}})
}

fn profile(extra: Value) -> Value {
    let mut p = json!({"name": "default", "capacity": {"minimum": "1", "maximum": "5", "default": "2"},
        "rules": [rule("Increase", "ChangeCount", "1")]});
    model::vmss::merge_patch(&mut p, &extra);
    p
}

fn recurring(schedule: Value) -> Value {
    profile(json!({"recurrence": {"frequency": "Week", "schedule": schedule}}))
}

/// `(body, None)` must parse; `(body, Some((code, text)))` must fail with that code and text.
#[test]
fn refusals() {
    let with_rule = |r: Value| profile(json!({"rules": [r]}));
    let trig = |t: Value| {
        let mut r = rule("Increase", "ChangeCount", "1");
        model::vmss::merge_patch(&mut r, &json!({"metricTrigger": t}));
        with_rule(r)
    };
    let act = |a: Value| {
        let mut r = rule("Increase", "ChangeCount", "1");
        model::vmss::merge_patch(&mut r, &json!({"scaleAction": a}));
        with_rule(r)
    };
    let sched = json!({"timeZone": "UTC", "days": ["Saturday"], "hours": [6], "minutes": [0]});
    let with_sched = |extra: Value| {
        let mut s = sched.clone();
        model::vmss::merge_patch(&mut s, &extra);
        setting(recurring(s))
    };
    let fixed = |f: Value| setting(profile(json!({"fixedDate": f})));
    let ok = None;
    let err = |code: &'static str, text: &'static str| Some((code, text));
    let cases: Vec<(Value, Option<(&str, &str)>)> = vec![
        (setting(profile(json!({}))), ok),
        (json!([1]), err("InvalidRequestContent", "JSON object")),
        (json!({"properties": {}}), err("LocationRequired", "location property is required")),
        (json!({"location": "x"}), err("InvalidRequestContent", "Required property 'properties'")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS}}), err("InvalidRequestContent", "Required property 'profiles' not found in JSON. Path 'properties'")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "profiles": []}}), err("InvalidParameter", "1 to 20 profiles; got 0")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "profiles": vec![profile(json!({})); 21]}}), err("InvalidParameter", "1 to 20 profiles; got 21")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "profiles": vec![profile(json!({})); 20]}}), ok),
        (json!({"location": "x", "properties": {"profiles": [profile(json!({}))]}}), err("InvalidRequestContent", "Required property 'targetResourceUri'")),
        (json!({"location": "x", "properties": {"targetResourceUri": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/serverfarms/p", "profiles": [profile(json!({}))]}}), err("InvalidParameter", "only scale sets")),
        (json!({"location": "x", "properties": {"targetResourceUri": "vmss", "profiles": [profile(json!({}))]}}), err("LinkedInvalidPropertyId", "'vmss'")),
        (json!({"location": "x", "etag": "1", "properties": {"targetResourceUri": VMSS, "profiles": [profile(json!({}))]}}), err("InvalidRequestContent", "Could not find member 'etag' on object of type 'AutoscaleSettingResource'. Path 'etag'")),
        (json!({"location": "x", "tags": {"a": 1}, "properties": {"targetResourceUri": VMSS, "profiles": [profile(json!({}))]}}), err("InvalidParameter", "tag 'a' must be a string")),
        (json!({"location": "x", "tags": (0..16).map(|i| (i.to_string(), json!("v"))).collect::<serde_json::Map<_, _>>(), "properties": {"targetResourceUri": VMSS, "profiles": [profile(json!({}))]}}), err("InvalidParameter", "at most 15 tags")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "enabled": "yes", "profiles": [profile(json!({}))]}}), err("InvalidParameter", "'properties.enabled' must be a boolean")),
        // Capacity.
        (setting(profile(json!({"capacity": {"minimum": "6", "maximum": "10", "default": "1"}}))), err("BadRequest", "The minimum capacity value '6' that you specified in the autoscale setting is greater than the default capacity of '1'.")),
        (setting(profile(json!({"capacity": {"minimum": "1", "maximum": "3", "default": "4"}}))), err("BadRequest", "default capacity value '4'")),
        (setting(profile(json!({"capacity": {"minimum": "4", "maximum": "3", "default": "4"}}))), err("BadRequest", "greater than the maximum capacity of '3'")),
        (setting(profile(json!({"capacity": {"minimum": "0", "maximum": "1000", "default": "0"}}))), ok),
        (setting(profile(json!({"capacity": {"minimum": 1, "maximum": 5, "default": 2}}))), ok),
        (setting(profile(json!({"capacity": {"minimum": "1", "maximum": "1001", "default": "2"}}))), err("InvalidParameter", "between 0 and 1000")),
        (setting(profile(json!({"capacity": {"minimum": "-1", "maximum": "3", "default": "2"}}))), err("InvalidParameter", "whole number")),
        (setting(profile(json!({"capacity": {"default": null}}))), err("InvalidRequestContent", "Required property 'default' not found in JSON. Path 'properties.profiles[0].capacity'")),
        // Rules.
        (setting(profile(json!({"rules": vec![rule("Increase", "ChangeCount", "1"); 11]}))), err("InvalidParameter", "has 11 rules; a profile has at most 10")),
        (setting(profile(json!({"rules": vec![rule("Increase", "ChangeCount", "1"); 10]}))), ok),
        (setting(profile(json!({"rules": null}))), err("InvalidRequestContent", "Required property 'rules'")),
        (setting(with_rule(json!({"metricTrigger": rule("Increase", "ChangeCount", "1")["metricTrigger"]}))), err("InvalidRequestContent", "Required property 'scaleAction'")),
        (setting(trig(json!({"timeGrain": "PT30S"}))), err("InvalidParameter", "between PT1M and PT12H")),
        (setting(trig(json!({"timeGrain": "PT13H", "timeWindow": "PT12H"}))), err("InvalidParameter", "timeGrain' is out of range")),
        (setting(trig(json!({"timeWindow": "PT4M"}))), err("InvalidParameter", "between PT5M and PT12H")),
        (setting(trig(json!({"timeWindow": "PT12H1M"}))), err("InvalidParameter", "between PT5M and PT12H")),
        (setting(trig(json!({"timeWindow": "PT12H"}))), ok),
        (setting(trig(json!({"timeGrain": "PT10M", "timeWindow": "PT5M"}))), err("InvalidParameter", "not be shorter than timeGrain")),
        (setting(trig(json!({"timeWindow": "5 minutes"}))), err("InvalidParameter", "not a valid ISO 8601 duration")),
        (setting(trig(json!({"statistic": "Median"}))), err("InvalidParameter", "Allowed values are: Average, Min, Max, Sum, Count.")),
        (setting(trig(json!({"statistic": "max"}))), ok),
        (setting(trig(json!({"timeAggregation": "Sum"}))), err("InvalidParameter", "Allowed values are: Average, Minimum, Maximum, Total, Count, Last.")),
        (setting(trig(json!({"operator": ">"}))), err("InvalidParameter", "Allowed values are: Equals, NotEquals, GreaterThan, GreaterThanOrEqual, LessThan, LessThanOrEqual.")),
        (setting(trig(json!({"threshold": "70"}))), err("InvalidParameter", "threshold' must be a number")),
        (setting(trig(json!({"metricName": ""}))), err("InvalidParameter", "metricName' must be a non-empty string")),
        (setting(trig(json!({"metricResourceUri": "web"}))), err("LinkedInvalidPropertyId", "'web'")),
        (setting(trig(json!({"dimensions": [{"DimensionName": "VMName", "Operator": "Equals", "Values": ["web_0"]}]}))), err("InvalidParameter", "dimension filters are not available locally")),
        (setting(trig(json!({"Dimensions": []}))), ok),
        (setting(trig(json!({"dividePerInstance": true, "metricNamespace": "microsoft.compute/virtualmachinescalesets"}))), ok),
        (setting(trig(json!({"metricNmae": "x"}))), err("InvalidRequestContent", "Could not find member 'metricNmae' on object of type 'MetricTrigger'. Path 'properties.profiles[0].rules[0].metricTrigger.metricNmae'")),
        (setting(act(json!({"cooldown": "PT30S"}))), err("InvalidParameter", "between PT1M and PT168H")),
        (setting(act(json!({"cooldown": "P7D"}))), ok),
        (setting(act(json!({"cooldown": "P8D"}))), err("InvalidParameter", "cooldown' is out of range")),
        (setting(act(json!({"value": "0"}))), err("InvalidParameter", "must be 1 or greater")),
        (setting(act(json!({"value": "two"}))), err("InvalidParameter", "whole number")),
        (setting(act(json!({"value": null}))), ok),
        (setting(act(json!({"value": "5"}))), err("InvalidActionValue", "invalid scale action value ('5'). Specify a scale value less than or equal to the difference between the capacity maximum 5 and the capacity minimum 1.")),
        (setting(act(json!({"value": "4"}))), ok),
        (setting(act(json!({"type": "PercentChangeCount", "value": "50"}))), ok),
        (setting(act(json!({"type": "ExactCount", "direction": "None", "value": "3"}))), ok),
        (setting(act(json!({"type": "ChangeCount", "direction": "None"}))), err("InvalidParameter", "direction None only goes with type ExactCount")),
        (setting(act(json!({"type": "ServiceAllowedNextValue"}))), err("InvalidParameter", "ServiceAllowedNextValue is not available locally")),
        (setting(act(json!({"type": "Double"}))), err("InvalidParameter", "Allowed values are: ChangeCount, PercentChangeCount, ExactCount.")),
        (setting(act(json!({"direction": "Up"}))), err("InvalidParameter", "Allowed values are: None, Increase, Decrease.")),
        // Recurrence.
        (with_sched(json!({})), ok),
        (with_sched(json!({"days": ["monday", "1", "0"]})), ok),
        (with_sched(json!({"days": ["Mon"]})), err("InvalidParameter", "Allowed values are: Sunday, Monday")),
        (with_sched(json!({"days": ["7"]})), err("InvalidParameter", "Allowed values are: Sunday")),
        (with_sched(json!({"days": []})), err("InvalidParameter", "at least one value")),
        (with_sched(json!({"hours": [24]})), err("InvalidParameter", "between 0 and 23")),
        (with_sched(json!({"minutes": [60]})), err("InvalidParameter", "between 0 and 59")),
        (with_sched(json!({"minutes": ["0"]})), err("InvalidParameter", "must be integers")),
        (with_sched(json!({"timeZone": "Pacific Standard Time"})), ok),
        (with_sched(json!({"timeZone": "UTC-08:00"})), ok),
        (with_sched(json!({"timeZone": "AUS Eastern Standard Time"})), err("InvalidParameter", "time zone 'AUS Eastern Standard Time'")),
        (with_sched(json!({"timeZone": null})), err("InvalidRequestContent", "Required property 'timeZone'")),
        (setting(profile(json!({"recurrence": {"frequency": "Day", "schedule": sched.clone()}}))), err("InvalidParameter", "must be Week")),
        (setting(profile(json!({"recurrence": {"frequency": "Week", "schedule": sched.clone()}, "fixedDate": {"start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"}}))), err("InvalidParameter", "both fixedDate and recurrence")),
        // Fixed dates.
        (fixed(json!({"timeZone": "Pacific Standard Time", "start": "2017-12-26T00:00:00", "end": "2017-12-26T23:59:00"})), ok),
        (fixed(json!({"start": "2024-01-01T00:00:00Z", "end": "2024-12-31T00:00:00Z"})), ok),
        (fixed(json!({"start": "2024-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z"})), err("InvalidParameter", "can't exceed 365")),
        (fixed(json!({"start": "2024-01-02T00:00:00Z", "end": "2024-01-01T00:00:00Z"})), err("InvalidParameter", "must be after the start")),
        (fixed(json!({"start": "tomorrow", "end": "2024-01-01T00:00:00Z"})), err("InvalidParameter", "not a valid ISO 8601 date-time")),
        (fixed(json!({"start": "2024-01-01T00:00:00Z"})), err("InvalidRequestContent", "Required property 'end'")),
        (fixed(json!({"timeZone": "Nowhere", "start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"})), err("InvalidParameter", "time zone 'Nowhere'")),
        // Notifications and predictive policy.
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "profiles": [profile(json!({}))], "notifications": [{"operation": "Alert"}]}}), err("InvalidParameter", "Allowed values are: Scale.")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "profiles": [profile(json!({}))], "notifications": [{"operation": "scale", "webhooks": [{"properties": {}}]}]}}), err("InvalidRequestContent", "Required property 'serviceUri'")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "profiles": [profile(json!({}))], "notifications": [{"operation": "Scale", "email": {"customEmails": [1]}}]}}), err("InvalidParameter", "list of strings")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "profiles": [profile(json!({}))], "predictiveAutoscalePolicy": {"scaleMode": "Sometimes"}}}), err("InvalidParameter", "Allowed values are: Disabled, ForecastOnly, Enabled.")),
        (json!({"location": "x", "properties": {"targetResourceUri": VMSS, "profiles": [profile(json!({}))], "predictiveAutoscalePolicy": {"scaleMode": "ForecastOnly", "scaleLookAheadTime": "PT2H"}}}), err("InvalidParameter", "between PT1M and PT1H")),
    ];
    for (body, want) in cases {
        match (autoscale::parse(&body), want) {
            (Ok(_), None) => {}
            (Err(e), Some((code, text))) => {
                assert_eq!(e.code, code, "{body}: {}", e.message);
                assert!(
                    e.message.contains(text),
                    "{body}:\n got {}\nwant {text}",
                    e.message
                );
            }
            (r, w) => panic!("{body}: got {r:?}, want {w:?}"),
        }
    }
}

#[test]
fn patch_merges_and_refuses_other_members() {
    let base = autoscale::parse(&setting(profile(json!({})))).unwrap();
    let s = autoscale::apply_patch(
        &base,
        &json!({"properties": {"enabled": false}, "tags": {"k": "v"}}),
    )
    .unwrap();
    assert!(!s.enabled);
    assert_eq!(s.profiles, base.profiles);
    assert_eq!(s.tags["k"], "v");
    let e = autoscale::apply_patch(&base, &json!({"location": "elsewhere"})).unwrap_err();
    assert!(
        e.message.contains("type 'AutoscaleSettingResourcePatch'"),
        "{}",
        e.message
    );
    let e = autoscale::apply_patch(&base, &json!({"properties": {"profiles": []}})).unwrap_err();
    assert!(e.message.contains("got 0"), "{}", e.message);
}

#[test]
fn fixed_date_times_are_read_in_the_time_zone() {
    let start = |f: Value| {
        let s = autoscale::parse(&setting(profile(json!({"fixedDate": f})))).unwrap();
        let Schedule::FixedDate(f) = &s.profiles[0].schedule else {
            panic!()
        };
        model::timezone::format_utc(f.start_utc)
    };
    let pst = |s: &str| json!({"timeZone": "Pacific Standard Time", "start": s, "end": "2017-12-27T00:00:00"});
    // Microsoft's docs example (no offset) and az's form of it (`Z` appended): Pacific midnight.
    assert_eq!(start(pst("2017-12-26T00:00:00")), "2017-12-26T08:00:00Z");
    assert_eq!(
        start(pst("2017-12-26T00:00:00.000Z")),
        "2017-12-26T08:00:00Z"
    );
    // An explicit offset names the instant.
    assert_eq!(
        start(pst("2017-12-26T00:00:00-05:00")),
        "2017-12-26T05:00:00Z"
    );
    assert_eq!(
        start(json!({"start": "2017-12-26T00:00:00", "end": "2017-12-27T00:00:00"})),
        "2017-12-26T00:00:00Z"
    );
}

#[test]
fn render_is_what_parse_reads() {
    let body = setting(recurring(
        json!({"timeZone": "W. Europe Standard Time", "days": ["Saturday", "sunday"], "hours": [6], "minutes": [0, 30]}),
    ));
    let s = autoscale::parse(&body).unwrap();
    let id = autoscale::resource_id("s", "rg", "web-autoscale");
    let out = autoscale::render(&s, &id, "web-autoscale");
    assert_eq!(out["type"], "Microsoft.Insights/autoscaleSettings");
    assert_eq!(out["id"], "/subscriptions/s/resourceGroups/rg/providers/microsoft.insights/autoscalesettings/web-autoscale");
    assert_eq!(out["properties"]["name"], "web-autoscale");
    assert_eq!(out["properties"]["profiles"][0]["capacity"]["default"], "2");
    assert_eq!(
        out["properties"]["profiles"][0]["recurrence"]["schedule"]["days"],
        json!(["Saturday", "sunday"])
    );
    assert_eq!(
        out["properties"]["profiles"][0]["rules"][0]["scaleAction"]["cooldown"],
        "PT5M"
    );
    assert_eq!(autoscale::parse(&out).unwrap(), s);
}

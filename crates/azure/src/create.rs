//! What `group create`, `network lb create` and `vmss create` send to a real subscription:
//! Azure-shaped bodies (a real location, Standard SKUs, a frontend on a public IP or a subnet,
//! scale sets on a subnet with an SSH key and the load balancer's pool and probe), built from
//! plain specs. Pure; the calls that send them are in `ops`.
use serde_json::{json, Value};

/// The address space and subnet a virtual network gets when `vmss create` makes one (az's
/// defaults).
pub const VNET_PREFIX: &str = "10.0.0.0/16";
pub const SUBNET_PREFIX: &str = "10.0.0.0/24";

/// Where a load balancer's frontend gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    /// A Standard static public IP (its resource id).
    PublicIp { id: String },
    /// A private address on a subnet (its resource id): dynamic, or the given static address.
    Subnet {
        id: String,
        private_ip: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancerSpec {
    pub location: String,
    pub frontend_name: String,
    pub frontend: Frontend,
    pub pool_name: String,
}

/// A Standard load balancer with one frontend and one backend pool (probes and rules are added
/// by `network lb probe|rule create`, as with az).
pub fn load_balancer(s: &LoadBalancerSpec) -> Value {
    let fe = match &s.frontend {
        Frontend::PublicIp { id } => json!({"publicIPAddress": {"id": id}}),
        Frontend::Subnet { id, private_ip } => match private_ip {
            Some(ip) => json!({"subnet": {"id": id}, "privateIPAllocationMethod": "Static",
                "privateIPAddress": ip}),
            None => json!({"subnet": {"id": id}, "privateIPAllocationMethod": "Dynamic"}),
        },
    };
    json!({
        "location": s.location,
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {
            "frontendIPConfigurations": [{"name": s.frontend_name, "properties": fe}],
            "backendAddressPools": [{"name": s.pool_name}],
            "probes": [],
            "loadBalancingRules": [],
        },
    })
}

/// A Standard static IPv4 public IP (what a Standard load balancer's frontend needs).
pub fn public_ip(location: &str) -> Value {
    json!({
        "location": location,
        "sku": {"name": "Standard", "tier": "Regional"},
        "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"},
    })
}

/// A virtual network with one subnet.
pub fn virtual_network(location: &str, subnet: &str) -> Value {
    json!({
        "location": location,
        "properties": {
            "addressSpace": {"addressPrefixes": [VNET_PREFIX]},
            "subnets": [{"name": subnet, "properties": {"addressPrefix": SUBNET_PREFIX}}],
        },
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSetSpec {
    pub name: String,
    pub location: String,
    /// `sku.name`, e.g. Standard_B1s.
    pub vm_size: String,
    pub capacity: u32,
    /// A managed image's id (`Microsoft.Compute/images`) or a gallery image version's.
    pub image_id: String,
    pub subnet_id: String,
    /// Backend pool ids the NIC joins.
    pub pools: Vec<String>,
    /// The load balancer probe that is the scale set's health source.
    pub health_probe: Option<String>,
    pub admin_username: String,
    /// An OpenSSH public key (`ssh-ed25519 AAAA... comment`); password login is disabled.
    pub ssh_public_key: String,
    pub computer_name_prefix: Option<String>,
    /// Automatic, Manual or Rolling.
    pub upgrade_mode: String,
    /// Default, NewestVM or OldestVM.
    pub scale_in: Option<String>,
    /// Automatic repairs: (grace period in minutes, repair action).
    pub repairs: Option<(u32, String)>,
    /// The network security group of the instances' NICs (its id).
    pub nsg: Option<String>,
}

/// A load-balancing rule's name, protocol and the backend port it sends clients to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPort {
    pub rule: String,
    /// The NSG's protocol: `Tcp`, `Udp`, or `*` for a rule's `All`.
    pub protocol: &'static str,
    /// `None` for every port (an HA-ports rule: `All` on port 0).
    pub port: Option<u16>,
}

/// Most security rules an NSG may hold (Azure's limit).
const MAX_SECURITY_RULES: usize = 1000;
/// Azure's limits on a security rule's name and description.
const MAX_RULE_NAME: usize = 80;
const MAX_DESCRIPTION: usize = 140;

/// The rules' backend ports of a load balancer as ARM returns it (rules without a backend
/// port send to the frontend port, as Azure does).
pub fn open_ports(lb: &Value) -> Vec<OpenPort> {
    let rules = lb
        .pointer("/properties/loadBalancingRules")
        .and_then(Value::as_array);
    rules
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let p = &r["properties"];
            let port = p["backendPort"].as_u64().or(p["frontendPort"].as_u64())?;
            let protocol = match p["protocol"].as_str().unwrap_or("Tcp") {
                "Udp" => "Udp",
                "All" => "*",
                _ => "Tcp",
            };
            Some(OpenPort {
                rule: r["name"].as_str()?.to_string(),
                protocol,
                port: match u16::try_from(port).ok()? {
                    0 => None,
                    p => Some(p),
                },
            })
        })
        .take(MAX_SECURITY_RULES)
        .collect()
}

/// At most `max` characters of `s`.
fn cut(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s,
    }
}

/// A network security group that lets clients from the Internet reach each rule's backend
/// port. A Standard load balancer is closed to inbound traffic unless an NSG on the subnet or
/// NIC opens it; Azure's default rules already admit its health probes
/// (AllowAzureLoadBalancerInBound). Priorities from 100 up, one rule each.
pub fn network_security_group(location: &str, lb: &str, ports: &[OpenPort]) -> Value {
    let rules: Vec<Value> = ports
        .iter()
        .zip(100u32..)
        .map(|(p, priority)| {
            let range = p.port.map_or("*".to_string(), |n| n.to_string());
            let name = cut(format!("allow-{lb}-{}", p.rule), MAX_RULE_NAME);
            let about = format!(
                "Clients of load balancer {lb}, rule {} (port {range})",
                p.rule
            );
            json!({"name": name, "properties": {
                "description": cut(about, MAX_DESCRIPTION),
                "protocol": p.protocol, "sourcePortRange": "*", "destinationPortRange": range,
                "sourceAddressPrefix": "Internet", "destinationAddressPrefix": "*",
                "access": "Allow", "priority": priority, "direction": "Inbound",
            }})
        })
        .collect();
    json!({"location": location, "properties": {"securityRules": rules}})
}

/// A Uniform scale set on `subnet_id`, running `image_id`, in the load balancer's pools.
/// Rolling needs a health source, so a Rolling scale set without `health_probe` is refused
/// here rather than by Azure after the round trip.
pub fn scale_set(s: &ScaleSetSpec) -> Result<Value, String> {
    if s.upgrade_mode.eq_ignore_ascii_case("Rolling") && s.health_probe.is_none() {
        return Err("a Rolling upgrade policy needs a health probe (--health-probe)".into());
    }
    if !looks_like_ssh_key(&s.ssh_public_key) {
        return Err("the SSH public key is not an OpenSSH public key (ssh-ed25519|ssh-rsa|ecdsa-sha2-* AAAA...)".into());
    }
    let pools: Vec<Value> = s.pools.iter().map(|p| json!({"id": p})).collect();
    let prefix = s.computer_name_prefix.clone().unwrap_or_else(|| {
        // Linux computer names: at most 15 characters of the prefix are used by az.
        s.name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(9)
            .collect()
    });
    let mut nic = json!({
        "primary": true,
        "ipConfigurations": [{"name": "ipconfig", "properties": {
            "subnet": {"id": s.subnet_id},
            "loadBalancerBackendAddressPools": pools,
        }}],
    });
    if let Some(id) = &s.nsg {
        nic["networkSecurityGroup"] = json!({"id": id});
    }
    let mut network = json!({
        "networkInterfaceConfigurations": [{"name": format!("{}-nic", s.name), "properties": nic}],
    });
    if let Some(p) = &s.health_probe {
        network["healthProbe"] = json!({"id": p});
    }
    let mut props = json!({
        "orchestrationMode": "Uniform",
        "overprovision": false,
        "upgradePolicy": {"mode": s.upgrade_mode},
        "virtualMachineProfile": {
            "osProfile": {
                "computerNamePrefix": prefix,
                "adminUsername": s.admin_username,
                "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {"publicKeys": [{
                        "path": format!("/home/{}/.ssh/authorized_keys", s.admin_username),
                        "keyData": s.ssh_public_key.trim(),
                    }]},
                },
            },
            "storageProfile": {
                "imageReference": {"id": s.image_id},
                "osDisk": {"createOption": "FromImage", "caching": "ReadWrite",
                    "managedDisk": {"storageAccountType": "Standard_LRS"}},
            },
            "networkProfile": network,
        },
    });
    if s.upgrade_mode.eq_ignore_ascii_case("Rolling") {
        // Azure's defaults, spelled out so the body says what will happen.
        props["upgradePolicy"]["rollingUpgradePolicy"] = json!({
            "maxBatchInstancePercent": 20, "maxUnhealthyInstancePercent": 20,
            "maxUnhealthyUpgradedInstancePercent": 20, "pauseTimeBetweenBatches": "PT0S",
        });
    }
    if let Some(rule) = &s.scale_in {
        props["scaleInPolicy"] = json!({"rules": [rule]});
    }
    if let Some((grace, action)) = &s.repairs {
        props["automaticRepairsPolicy"] =
            json!({"enabled": true, "gracePeriod": format!("PT{grace}M"), "repairAction": action});
    }
    Ok(json!({
        "location": s.location,
        "sku": {"name": s.vm_size, "tier": "Standard", "capacity": s.capacity},
        "properties": props,
    }))
}

/// An OpenSSH public key line: a known key type, then base64 (a sanity check, so a private key
/// or a file name is not sent as the key).
pub fn looks_like_ssh_key(k: &str) -> bool {
    let mut parts = k.split_whitespace();
    let (Some(kind), Some(data)) = (parts.next(), parts.next()) else {
        return false;
    };
    let known = ["ssh-ed25519", "ssh-rsa"].contains(&kind) || kind.starts_with("ecdsa-sha2-");
    known
        && data.starts_with("AAAA")
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
}

/// The location Azure wants: `local` (the daemon's) is not one.
pub fn check_location(location: &str) -> Result<(), String> {
    if location.is_empty() || location.eq_ignore_ascii_case("local") {
        return Err(format!(
            "'{location}' is not an Azure location: pass --location (e.g. westeurope)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm0 user@host";

    fn spec() -> ScaleSetSpec {
        ScaleSetSpec {
            name: "web-app".into(),
            location: "westeurope".into(),
            vm_size: "Standard_B1s".into(),
            capacity: 2,
            image_id: "/i".into(),
            subnet_id: "/s".into(),
            pools: vec!["/lb/backendAddressPools/be".into()],
            health_probe: Some("/lb/probes/http".into()),
            admin_username: "azureuser".into(),
            ssh_public_key: format!("{KEY}\n"),
            computer_name_prefix: None,
            upgrade_mode: "Rolling".into(),
            scale_in: Some("OldestVM".into()),
            repairs: Some((30, "Replace".into())),
            nsg: None,
        }
    }

    #[test]
    fn nsg_opens_each_rules_backend_port() {
        let lb = json!({"properties": {"loadBalancingRules": [
            {"name": "http", "properties": {"protocol": "Tcp", "frontendPort": 80, "backendPort": 8080}},
            {"name": "tls", "properties": {"frontendPort": 443}},
            {"name": "dns", "properties": {"protocol": "Udp", "frontendPort": 53, "backendPort": 53}},
            {"name": "ha", "properties": {"protocol": "All", "frontendPort": 0, "backendPort": 0}},
            {"name": "bad", "properties": {"backendPort": 70000}},
            {"properties": {"backendPort": 22}},
        ]}});
        let ports = open_ports(&lb);
        let want = |rule: &str, protocol, port| OpenPort {
            rule: rule.into(),
            protocol,
            port,
        };
        assert_eq!(
            ports,
            [
                want("http", "Tcp", Some(8080)),
                want("tls", "Tcp", Some(443)),
                want("dns", "Udp", Some(53)),
                want("ha", "*", None),
            ]
        );
        assert_eq!(open_ports(&json!({})), []);
        let v = network_security_group("westeurope", "lb", &ports);
        assert_eq!(v["location"], "westeurope");
        let rules = v["properties"]["securityRules"].as_array().unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0]["name"], "allow-lb-http");
        assert_eq!(rules[2]["properties"]["protocol"], "Udp");
        let ha = &rules[3]["properties"];
        assert_eq!(
            (&ha["protocol"], &ha["destinationPortRange"]),
            (&json!("*"), &json!("*"))
        );
        // Azure's limits: names of at most 80 characters, descriptions of at most 140.
        let long = "r".repeat(200);
        let v = network_security_group("w", &"l".repeat(100), &[want(&long, "Tcp", Some(80))]);
        let r = &v["properties"]["securityRules"][0];
        assert_eq!(r["name"].as_str().unwrap().chars().count(), 80);
        assert_eq!(
            r["properties"]["description"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            140
        );
        let r = &rules[1]["properties"];
        assert_eq!(
            (&r["destinationPortRange"], &r["priority"], &r["direction"]),
            (&json!("443"), &json!(101), &json!("Inbound"))
        );
        assert_eq!(
            (&r["access"], &r["protocol"]),
            (&json!("Allow"), &json!("Tcp"))
        );
        assert_eq!(r["sourceAddressPrefix"], "Internet");
    }

    #[test]
    fn scale_set_nics_carry_the_nsg() {
        let nic = |v: &Value| {
            v["properties"]["virtualMachineProfile"]["networkProfile"]
                ["networkInterfaceConfigurations"][0]["properties"]
                .clone()
        };
        assert!(nic(&scale_set(&spec()).unwrap())
            .get("networkSecurityGroup")
            .is_none());
        let s = ScaleSetSpec {
            nsg: Some("/nsg".into()),
            ..spec()
        };
        assert_eq!(
            nic(&scale_set(&s).unwrap())["networkSecurityGroup"],
            json!({"id": "/nsg"})
        );
    }

    #[test]
    fn scale_set_body() {
        let v = scale_set(&spec()).unwrap();
        let p = &v["properties"];
        assert_eq!(v["location"], "westeurope");
        assert_eq!(
            v["sku"],
            json!({"name": "Standard_B1s", "tier": "Standard", "capacity": 2})
        );
        let os = &p["virtualMachineProfile"]["osProfile"];
        assert_eq!(os["computerNamePrefix"], "webapp");
        assert_eq!(
            os["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"],
            KEY
        );
        assert_eq!(
            os["linuxConfiguration"]["ssh"]["publicKeys"][0]["path"],
            "/home/azureuser/.ssh/authorized_keys"
        );
        let ip = &p["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"][0]
            ["properties"]["ipConfigurations"][0]["properties"];
        assert_eq!(ip["subnet"]["id"], "/s");
        assert_eq!(
            ip["loadBalancerBackendAddressPools"][0]["id"],
            "/lb/backendAddressPools/be"
        );
        assert_eq!(
            p["virtualMachineProfile"]["networkProfile"]["healthProbe"]["id"],
            "/lb/probes/http"
        );
        assert_eq!(
            p["upgradePolicy"]["rollingUpgradePolicy"]["maxBatchInstancePercent"],
            20
        );
        assert_eq!(p["automaticRepairsPolicy"]["gracePeriod"], "PT30M");
        assert_eq!(p["scaleInPolicy"]["rules"], json!(["OldestVM"]));
    }

    #[test]
    fn scale_set_refusals() {
        let mut s = spec();
        s.health_probe = None;
        assert!(scale_set(&s).unwrap_err().contains("health probe"));
        s.upgrade_mode = "Manual".into();
        let v = scale_set(&s).unwrap();
        assert!(v["properties"]["upgradePolicy"]
            .get("rollingUpgradePolicy")
            .is_none());
        assert!(v["properties"]["virtualMachineProfile"]["networkProfile"]
            .get("healthProbe")
            .is_none());
        s.ssh_public_key = "-----BEGIN OPENSSH PRIVATE KEY-----".into();
        assert!(scale_set(&s).is_err());
    }

    #[test]
    fn ssh_keys_and_locations() {
        for (k, ok) in [
            (KEY, true),
            ("ssh-rsa AAAAB3NzaC1yc2E= c", true),
            ("ecdsa-sha2-nistp256 AAAAE2VjZHNh", true),
            ("ssh-dss AAAAB3", false),
            ("ssh-ed25519", false),
            ("ssh-ed25519 not-base64!", false),
            ("/root/.ssh/id_ed25519.pub", false),
            ("", false),
        ] {
            assert_eq!(looks_like_ssh_key(k), ok, "{k}");
        }
        assert!(check_location("westeurope").is_ok());
        assert!(check_location("local").is_err());
        assert!(check_location("").is_err());
    }

    #[test]
    fn load_balancer_frontends() {
        let mut s = LoadBalancerSpec {
            location: "westeurope".into(),
            frontend_name: "fe".into(),
            frontend: Frontend::PublicIp { id: "/pip".into() },
            pool_name: "be".into(),
        };
        let v = load_balancer(&s);
        let fe = &v["properties"]["frontendIPConfigurations"][0];
        assert_eq!(
            fe,
            &json!({"name": "fe", "properties": {"publicIPAddress": {"id": "/pip"}}})
        );
        assert_eq!(v["sku"]["name"], "Standard");
        s.frontend = Frontend::Subnet {
            id: "/s".into(),
            private_ip: None,
        };
        let v = load_balancer(&s);
        assert_eq!(
            v["properties"]["frontendIPConfigurations"][0]["properties"],
            json!({"subnet": {"id": "/s"}, "privateIPAllocationMethod": "Dynamic"})
        );
        s.frontend = Frontend::Subnet {
            id: "/s".into(),
            private_ip: Some("10.0.0.9".into()),
        };
        let v = load_balancer(&s);
        assert_eq!(
            v["properties"]["frontendIPConfigurations"][0]["properties"]["privateIPAddress"],
            "10.0.0.9"
        );
        assert_eq!(public_ip("westeurope")["sku"]["name"], "Standard");
        assert_eq!(
            virtual_network("westeurope", "default")["properties"]["subnets"][0]["properties"]
                ["addressPrefix"],
            SUBNET_PREFIX
        );
    }
}

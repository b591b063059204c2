//! Azure naming rules for the resources we implement.
use crate::ModelError;

fn check(
    kind: &str,
    name: &str,
    max: usize,
    ok: impl Fn(char) -> bool,
    first: impl Fn(char) -> bool,
    last: impl Fn(char) -> bool,
) -> Result<(), ModelError> {
    let bad = || {
        ModelError::new(
            "InvalidResourceName",
            format!("The {kind} name '{name}' is invalid: it must be 1-{max} characters of letters, digits and the allowed punctuation, and must start and end as Azure requires."),
        )
    };
    let mut chars = name.chars();
    let (Some(f), Some(l)) = (chars.next(), name.chars().last()) else {
        return Err(bad());
    };
    if name.chars().count() > max || !name.chars().all(&ok) || !first(f) || !last(l) {
        return Err(bad());
    }
    Ok(())
}

/// Resource group: 1-90 characters, Unicode letters and digits, underscore, hyphen, period,
/// parentheses; not ending in a period (Azure's rule: .NET's `Char.IsLetterOrDigit`, which
/// Rust's `is_alphabetic`/`is_numeric` approximate; they also admit letter-like marks and
/// non-decimal numerals such as `²`).
pub fn resource_group(name: &str) -> Result<(), ModelError> {
    check(
        "resource group",
        name,
        90,
        |c| c.is_alphabetic() || c.is_numeric() || "_-.()".contains(c),
        |_| true,
        |c| c != '.',
    )
}

/// Virtual machine scale set (Linux): 1-64 chars, alphanumerics, underscore, hyphen, period;
/// starts with an alphanumeric, ends with an alphanumeric or underscore.
pub fn vmss(name: &str) -> Result<(), ModelError> {
    check(
        "virtual machine scale set",
        name,
        64,
        |c| c.is_ascii_alphanumeric() || "_-.".contains(c),
        |c| c.is_ascii_alphanumeric(),
        |c| c.is_ascii_alphanumeric() || c == '_',
    )
}

/// Network resources and child resources (LB, probe, rule, pool, frontend), images: 1-80 chars,
/// alphanumerics, underscore, period, hyphen; start alphanumeric; end alphanumeric or underscore.
pub fn network_or_image(kind: &str, name: &str) -> Result<(), ModelError> {
    check(
        kind,
        name,
        80,
        |c| c.is_ascii_alphanumeric() || "_-.".contains(c),
        |c| c.is_ascii_alphanumeric(),
        |c| c.is_ascii_alphanumeric() || c == '_',
    )
}

/// Subscription ids are GUIDs in Azure; locally we accept any 1-64 char [A-Za-z0-9-] string.
pub fn subscription(id: &str) -> Result<(), ModelError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ModelError::new(
            "InvalidSubscriptionId",
            format!("The provided subscription identifier '{id}' is malformed or invalid."),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let cases: &[(&str, bool, bool)] = &[
            // name, valid rg, valid vmss
            ("vmssdevops2-rg", true, true),
            ("vmssdevops2", true, true),
            ("", false, false),
            ("a.", false, false),
            ("-abc", true, false),
            ("abc-", true, false),
            ("abc_", true, true),
            ("has space", false, false),
            ("(paren)", true, false),
            (&"x".repeat(64), true, true),
            (&"x".repeat(65), true, false),
            (&"x".repeat(91), false, false),
            ("ünï", true, false),
            ("Grupo-Producción", true, false),
            ("資源群組", true, false),
            ("группа.(1)", true, false),
            ("ünï.", false, false),
            ("tab\tname", false, false),
            ("slash/name", false, false),
            ("emoji😀", false, false),
            (&"ü".repeat(90), true, false),
            (&"ü".repeat(91), false, false),
        ];
        for (n, rg, vm) in cases {
            assert_eq!(resource_group(n).is_ok(), *rg, "rg {n}");
            assert_eq!(vmss(n).is_ok(), *vm, "vmss {n}");
        }
        assert!(network_or_image("load balancer", &"l".repeat(80)).is_ok());
        assert!(network_or_image("load balancer", &"l".repeat(81)).is_err());
        assert_eq!(vmss("bad name").unwrap_err().code, "InvalidResourceName");
    }
}

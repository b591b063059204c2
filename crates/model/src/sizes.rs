//! Azure VM sizes offered here: each `sku.name` stands for its vCPU count and memory, which the
//! engine applies to the instance's cgroup (CPU quota = vCPUs, memory max = the size's memory).
//! Names are matched case-insensitively, as Azure does; unknown sizes are refused.
use crate::ModelError;

/// One VM size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// Azure's spelling, e.g. `Standard_B1s`.
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
}

const fn size(name: &'static str, vcpus: u32, memory_mib: u64) -> VmSize {
    VmSize {
        name,
        vcpus,
        memory_mib,
    }
}

/// Azure's B, Dv2/DSv2, Dv3/Dsv3, Dv5/Dsv5 and Fsv2 sizes (vCPUs, GiB × 1024), from the size
/// pages in azure-compute-docs.
pub const SIZES: &[VmSize] = &[
    size("Standard_B1ls", 1, 512),
    size("Standard_B1s", 1, 1024),
    size("Standard_B1ms", 1, 2048),
    size("Standard_B2s", 2, 4096),
    size("Standard_B2ms", 2, 8192),
    size("Standard_B4ms", 4, 16384),
    size("Standard_B2ts_v2", 2, 1024),
    size("Standard_B2ls_v2", 2, 4096),
    size("Standard_B2s_v2", 2, 8192),
    size("Standard_B4s_v2", 4, 16384),
    size("Standard_D1_v2", 1, 3584),
    size("Standard_DS1_v2", 1, 3584),
    size("Standard_D2_v2", 2, 7168),
    size("Standard_DS2_v2", 2, 7168),
    size("Standard_DS3_v2", 4, 14336),
    size("Standard_D2_v3", 2, 8192),
    size("Standard_D2s_v3", 2, 8192),
    size("Standard_D4_v3", 4, 16384),
    size("Standard_D4s_v3", 4, 16384),
    size("Standard_D8s_v3", 8, 32768),
    size("Standard_D2_v5", 2, 8192),
    size("Standard_D2s_v5", 2, 8192),
    size("Standard_D4_v5", 4, 16384),
    size("Standard_D4s_v5", 4, 16384),
    size("Standard_F2s_v2", 2, 4096),
    size("Standard_F4s_v2", 4, 8192),
];

/// The size named `name` (any case).
pub fn lookup(name: &str) -> Option<VmSize> {
    SIZES
        .iter()
        .copied()
        .find(|s| s.name.eq_ignore_ascii_case(name))
}

/// The size named `name`, or Azure's refusal of an unknown size.
pub fn require(name: &str) -> Result<VmSize, ModelError> {
    lookup(name).ok_or_else(|| {
        let names: Vec<&str> = SIZES.iter().map(|s| s.name).collect();
        ModelError::invalid(format!(
            "The value {name} provided for the VM size is not valid. The valid sizes in the current region are: {}.",
            names.join(",")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_resolve_in_any_case_and_unknown_ones_are_refused() {
        for (name, want) in [
            ("Standard_B1s", Some((1, 1024))),
            ("standard_b1S", Some((1, 1024))),
            ("Standard_D2s_v3", Some((2, 8192))),
            ("Standard_B1ls", Some((1, 512))),
            ("Standard_DS3_v2", Some((4, 14336))),
            ("Standard_A0", None),
            ("", None),
        ] {
            let got = lookup(name).map(|s| (s.vcpus, s.memory_mib));
            assert_eq!(got, want, "{name}");
        }
        let e = require("Standard_Nope").unwrap_err();
        assert_eq!(e.code, "InvalidParameter");
        assert!(
            e.message
                .starts_with("The value Standard_Nope provided for the VM size is not valid."),
            "{}",
            e.message
        );
        assert!(e.message.contains("Standard_B1s,"), "{}", e.message);
        assert_eq!(require("STANDARD_B2S").unwrap().name, "Standard_B2s");
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in SIZES.iter().enumerate() {
            assert!(
                SIZES[i + 1..]
                    .iter()
                    .all(|b| !b.name.eq_ignore_ascii_case(a.name)),
                "{}",
                a.name
            );
        }
    }
}

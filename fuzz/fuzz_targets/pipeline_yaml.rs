//! Azure Pipelines YAML: the position-tracking YAML layer and the pipeline parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = pipeline::yaml::parse("azure-pipelines.yml", s);
    let _ = pipeline::parse::parse_pipeline("azure-pipelines.yml", s);
});

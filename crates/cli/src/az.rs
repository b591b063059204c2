//! The `az` personality (argv[0] = `az`, the AzureCLI@2 shim): az arguments as ours.
/// Translates `az ...` arguments to `scaleset ...` arguments. Our commands already use az's
/// names and flags (`vmss update|show|list-instances|scale`, `network lb show`, `image list`,
/// `group list`, `-g/--resource-group`, `-n/--name`, `--set`, `-o/--output`); this drops the
/// global az flags we have no use for and maps `--output jsonc|yaml|none`.
pub fn az_args(args: Vec<String>) -> Vec<String> {
    let mut out = vec!["scaleset".to_string()];
    let mut it = args.into_iter().skip(1).peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--only-show-errors" | "--verbose" | "--debug" | "--yes" | "-y" => {}
            "--subscription" => {
                it.next();
            }
            "--query" => {
                it.next();
            }
            "-o" | "--output" => {
                let v = it.next().unwrap_or_default();
                out.push("--output".into());
                out.push(match v.as_str() {
                    "table" | "tsv" => v,
                    _ => "json".into(),
                });
            }
            _ if a.starts_with("--output=") => {
                let v = &a["--output=".len()..];
                out.push(format!(
                    "--output={}",
                    if v == "table" || v == "tsv" {
                        v
                    } else {
                        "json"
                    }
                ));
            }
            _ => out.push(a),
        }
    }
    out
}

//! Azure Pipelines YAML: the position-tracking YAML layer and the pipeline parser. The first
//! byte repeats the rest up to past the file cap, so nesting, node and size limits are reached
//! from short inputs; whatever parses stays within them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pipeline::yaml::{self, Node, NodeKind, MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES};

/// (deepest nesting of collections, nodes), without recursion.
fn shape(root: &Node) -> (usize, usize) {
    let (mut deepest, mut nodes) = (0, 0);
    let mut stack = vec![(root, 0usize)];
    while let Some((n, depth)) = stack.pop() {
        nodes += 1;
        match &n.kind {
            NodeKind::Seq(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            NodeKind::Map(entries) => {
                deepest = deepest.max(depth + 1);
                for (k, v) in entries {
                    stack.push((k, depth + 1));
                    stack.push((v, depth + 1));
                }
            }
            _ => {}
        }
    }
    (deepest, nodes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&reps, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    // 0 → as is; otherwise repeated up to a little past the size cap.
    let text = match (reps, s.len()) {
        (0, _) | (_, 0) => s.to_string(),
        (r, n) => s.repeat((usize::from(r) * 64).min(MAX_FILE_BYTES / n + 2)),
    };
    match yaml::parse("azure-pipelines.yml", &text) {
        Ok(root) => {
            assert!(text.len() <= MAX_FILE_BYTES);
            let (depth, nodes) = shape(&root);
            assert!(depth <= MAX_DEPTH, "depth {depth}");
            assert!(nodes <= MAX_NODES, "nodes {nodes}");
        }
        Err(e) if text.len() > MAX_FILE_BYTES => {
            assert_eq!((e.pos.line, e.pos.column), (1, 1), "{e}");
        }
        Err(e) => assert!(e.pos.line >= 1 && e.pos.column >= 1, "{e}"),
    }
    let _ = pipeline::parse::parse_pipeline("azure-pipelines.yml", &text);
});

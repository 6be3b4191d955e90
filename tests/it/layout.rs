//! The layering rule of `src/lib.rs`, checked on the source: `core` imports nothing of ours above
//! it and no tokio; `sources` import `core` only; `serve` imports `core` and `sources`; and no two
//! modules import each other, directly or through others (comments and test code excluded).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::repo_file;

const LAYERS: [&str; 5] = ["core", "sources", "serve", "dev", "cli"];

/// What each layer may import, besides itself.
fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        "core" => &[],
        "sources" => &["core"],
        "serve" => &["core", "sources"],
        _ => &["core", "sources", "serve", "dev", "cli"],
    }
}

/// `layer::module` of every `.rs` file under `src/<layer>/`, with its non-test text.
fn modules() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for layer in LAYERS {
        collect(&repo_file("src").join(layer), layer, &mut out);
    }
    out
}

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            collect(&path, &format!("{prefix}::{stem}"), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            // Code only: comments may name an upper layer ("served by …"); tests may use anything.
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            let name = if stem == "mod" {
                prefix.to_owned()
            } else {
                format!("{prefix}::{stem}")
            };
            out.insert(name, code);
        }
    }
}

/// The modules of ours that `code` names (`crate::core::config::X` → `core::config`), other than
/// itself and its own parent or children.
fn imports(name: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        // The longest known module that prefixes the path.
        let mut best = None;
        let mut acc = String::new();
        for seg in path.split("::").filter(|s| !s.is_empty()) {
            if !acc.is_empty() {
                acc.push_str("::");
            }
            acc.push_str(seg);
            if known.contains(&acc) {
                best = Some(acc.clone());
            }
        }
        if let Some(m) = best
            && m != name
            && !name.starts_with(&format!("{m}::"))
            && !m.starts_with(&format!("{name}::"))
        {
            out.insert(m);
        }
    }
    out
}

#[test]
fn a_lower_layer_never_imports_an_upper_one_and_modules_form_no_cycle() {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    assert!(known.contains("core::config") && known.contains("sources::jwks"));
    let graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(name, code)| (name.clone(), imports(name, code, &known)))
        .collect();

    let mut wrong = Vec::new();
    for (name, deps) in &graph {
        let layer = name.split("::").next().unwrap();
        for dep in deps {
            let dep_layer = dep.split("::").next().unwrap();
            if dep_layer != layer && !allowed(layer).contains(&dep_layer) {
                wrong.push(format!("{name} imports {dep}"));
            }
        }
        if layer == "core" && modules[name].contains("tokio::") {
            wrong.push(format!("{name} uses tokio"));
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));

    // Cycles: depth-first search with the path on a stack.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|n| n == node) {
            cycles.push(format!("{} -> {node}", stack[i..].join(" -> ")));
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        stack.push(node.to_owned());
        for dep in graph.get(node).into_iter().flatten() {
            visit(dep, graph, stack, done, cycles);
        }
        stack.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for name in graph.keys() {
        visit(name, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

//! The architecture invariant, checked: the crate's modules form layers, and a module names only
//! modules below it (ARCHITECTURE.md, "Layers"). This reads every source file's `crate::…` paths, so
//! a new import that climbs a layer fails here, in review, before it becomes a cycle.
//!
//! `cargo test --lib architecture -- --nocapture` prints the import graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every top-level module, lowest first. A module may use only modules listed before it.
const LAYERS: &[&str] = &[
    // Foundation: errors and small helpers.
    "error",
    "util",
    "faults",
    "settings",
    "keygroup",
    "codec",
    // Format vocabulary: content hashes, object paths, type tags, what is recorded about a state.
    "hash",
    "layout",
    "state_type",
    "state_info",
    // Storage: the local filesystem seam and the object store seam.
    "fs",
    "store",
    // Keyed state: the RocksDB instance, typed access, typed declarations, the user's handle.
    "engine",
    // The canonical savepoint format: written from and loaded into an engine, read on its own.
    "canonical",
    "state",
    "descriptor",
    "backend",
    // What checkpoints, restores and GC publish (names and recording; knows no checkpoint).
    "metrics",
    // Checkpoints: snapshot, coordinator, restore, GC.
    "checkpoint",
    // Operators' read-only view of a root.
    "admin",
];

/// The top-level module a source file belongs to (`src/checkpoint/gc.rs` → `checkpoint`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The top-level modules a file's code names through `crate::<module>`, in any form: a plain path,
/// a group `crate::{a::x, b}` (nested, over several lines), or an inline path in an expression.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The first segment of every item at the group's top level.
            let (mut depth, mut item_start) = (0usize, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphanumeric() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                        item_start = false;
                    }
                    c if item_start && !c.is_whitespace() => item_start = false,
                    _ => {}
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        rest = after;
    }
    out
}

/// `super::` paths that climb to the crate root, written as `crate::` (a file `depth` modules
/// below the root needs `depth` of them).
fn normalise_super(text: &str, depth: usize) -> String {
    text.replace(&"super::".repeat(depth), "crate::")
}

/// How many modules below the crate root a file's module is (`src/a.rs` and `src/a/mod.rs`: 1).
fn depth_of(src: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(src).expect("a file under src");
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names the crate root re-exports (`pub use store::{LocalStore, …}`), by the module they come
/// from: `crate::LocalStore` names `store` as surely as `crate::store::LocalStore` does.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(at) = statement.find("pub use ") else {
            continue;
        };
        let body = &statement[at + "pub use ".len()..];
        let module: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let names = body.rsplit("::").next().unwrap_or("");
        for name in names.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !name.is_empty() && name != module {
                out.insert(name.to_owned(), module.clone());
            }
        }
    }
    out
}

/// module → the modules it names (only modules of `LAYERS`; macros aside).
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        if module == "lib" || module == "architecture" {
            continue; // the crate root re-exports everything; this file names the layers
        }
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let text = normalise_super(&text, depth_of(&src, &file));
        let used: Vec<String> = crate_paths(&text)
            .into_iter()
            .map(|name| reexports.get(&name).cloned().unwrap_or(name))
            .filter(|m| *m != module && LAYERS.contains(&m.as_str()))
            .collect();
        graph.entry(module).or_default().extend(used);
    }
    graph
}

#[test]
fn every_module_is_in_a_layer() {
    for module in import_graph().keys() {
        assert!(
            LAYERS.contains(&module.as_str()),
            "module `{module}` is in no layer: add it to LAYERS in src/architecture.rs and to \
             ARCHITECTURE.md"
        );
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m).expect("a known module");
    let graph = import_graph();
    let mut violations = Vec::new();
    for (module, used) in &graph {
        println!(
            "{module:<11} -> {}",
            used.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        for dependency in used {
            if rank(dependency) > rank(module) {
                violations.push(format!("`{module}` uses `{dependency}`, a higher layer"));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn root_reexports_count_as_their_module() {
    let lib = "pub use store::{LocalStore, Store};\npub use error::{Error, ErrorKind, Result};";
    let map = root_reexports(lib);
    assert_eq!(map["LocalStore"], "store");
    assert_eq!(map["ErrorKind"], "error");
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let text = "use crate::{error::Error, hash};\nlet x = crate::util::nonce(); // crate::admin\n";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["error", "hash", "util"]);
    // rustfmt's multi-line groups, nested groups, renames.
    let text = "use crate::{\n    checkpoint::job as x,\n    keygroup::{KeyGroupRange, Other},\n    admin as y,\n};";
    let found: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(found, ["admin", "checkpoint", "keygroup"]);
}

#[test]
fn the_checker_sees_super_paths_that_reach_the_crate_root() {
    let src = Path::new("/x/src");
    assert_eq!(depth_of(src, &src.join("engine.rs")), 1);
    assert_eq!(depth_of(src, &src.join("store/mod.rs")), 1);
    assert_eq!(depth_of(src, &src.join("checkpoint/restore/claim.rs")), 3);
    let text = normalise_super("use super::checkpoint::gc;", 1);
    let found: Vec<String> = crate_paths(&text).into_iter().collect();
    assert_eq!(found, ["checkpoint"]);
    // Two levels down, one `super::` stays inside the module; two reach the root.
    let text = normalise_super("use super::sibling;\nuse super::super::hash;", 2);
    let found: Vec<String> = crate_paths(&text).into_iter().collect();
    assert_eq!(found, ["hash"]);
}

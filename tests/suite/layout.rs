//! The shape of the code, checked: within each crate under `host/`, the
//! modules import one another without cycles, so the layers can be read
//! from the folders (docs/architecture.md). A child module using its
//! ancestors' items is how Rust nests modules, not a cycle; every other
//! `crate::` or `super::` path, and a parent naming its child's items
//! (`child::item`), is an edge. Reads files only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, e.g. `["processor", "batch"]`; the crate root is empty.
type Module = Vec<String>;

#[test]
fn module_imports_have_no_cycles() {
    let host = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut crates = vec![host.join("src")];
    for entry in std::fs::read_dir(host).expect("read host/") {
        let src = entry.expect("a directory entry").path().join("src");
        if src.is_dir() {
            crates.push(src);
        }
    }
    let mut found = Vec::new();
    for src in &crates {
        let graph = import_graph(src);
        assert!(
            graph.len() > 1 || src != &host.join("src"),
            "no modules read"
        );
        if let Some(cycle) = find_cycle(&graph) {
            found.push(format!("{}: {}", src.display(), cycle.join(" -> ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// A cycle in `graph`, as module names, or None.
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<String>> {
    fn visit(
        m: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, bool>, // false: on the stack, true: done
        stack: &mut Vec<Module>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(true) => return None,
            Some(false) => {
                let at = stack.iter().position(|s| s == m).expect("on the stack");
                let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.join("::")).collect();
                cycle.push(m.join("::"));
                return Some(cycle);
            }
            None => {}
        }
        state.insert(m.clone(), false);
        stack.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.clone(), true);
        None
    }
    let mut state = BTreeMap::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut state, &mut Vec::new()))
}

/// Every module file of the crate at `src`, with the modules it imports
/// (ancestors and the crate root left out).
fn import_graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    let modules: BTreeMap<Module, PathBuf> =
        files.into_iter().map(|f| (module_of(src, &f), f)).collect();
    let mut graph = BTreeMap::new();
    for (m, file) in &modules {
        let text = std::fs::read_to_string(file).expect("read a source file");
        // a file's unit tests (its last item) may reach anywhere
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut edges = BTreeSet::new();
        let children = modules
            .keys()
            .filter(|c| c.len() == m.len() + 1 && c.starts_with(m));
        for child in children {
            if names(code, &format!("{}::", child[m.len()])) {
                edges.insert(child.clone());
            }
        }
        for path in paths(code, m) {
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p))
                .unwrap_or_default();
            if !target.is_empty() && !m.starts_with(&target) {
                edges.insert(target);
            }
        }
        graph.insert(m.clone(), edges);
    }
    graph
}

/// Whether `code` names the relative path `prefix` (a child module's
/// items, as `child::item`), not as the tail of a longer path.
fn names(code: &str, prefix: &str) -> bool {
    code.match_indices(prefix).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let p = entry.expect("a directory entry").path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut m: Module = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// The absolute module paths `code` (in module `m`) names with `crate::`
/// or `super::`, groups (`crate::{a, b::c}`) expanded one level.
fn paths(code: &str, m: &Module) -> Vec<Module> {
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", m[..m.len().saturating_sub(1)].to_vec()),
    ] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::super::` is read from its first `super`
            }
            let mut base = base.clone();
            let mut rest = &code[at + prefix.len()..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            for tail in group_items(rest) {
                let mut p = base.clone();
                p.extend(tail.split("::").map(str::to_string));
                out.push(p);
            }
        }
    }
    out
}

/// `a::b::C` -> ["a::b::C"]; `{a::B, c}` -> ["a::B", "c"] (nested groups
/// cut at their brace).
fn group_items(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_string()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let end = group.find('}').unwrap_or(group.len());
    group[..end]
        .split(',')
        .map(|s| ident(s.trim()))
        .filter(|s| !s.is_empty())
        .collect()
}

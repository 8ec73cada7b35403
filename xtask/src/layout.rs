//! A check of the agent's layout (ARCHITECTURE.md): the modules of
//! `agent/src` import each other without a cycle, so the data flow reads in
//! one direction. Source text is scanned for `crate::` paths; test code
//! (files and `#[cfg(test)] mod`s) is left out, since tests may reach
//! anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Module → the modules it imports, each cut to its first `depth` names
/// (`engine::bans` at depth 2 is `engine::bans`, at depth 1 `engine`).
pub(crate) type Graph = BTreeMap<String, BTreeSet<String>>;

/// The import graph of the crate whose `src` directory is `root`.
pub(crate) fn import_graph(root: &Path, depth: usize) -> std::io::Result<Graph> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    let modules: Vec<(Vec<String>, &std::path::PathBuf)> = files
        .iter()
        .filter_map(|file| {
            let rel = file.strip_prefix(root).expect("walked below root");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let skip = parts.is_empty()
                || parts[0] == "lib"
                || parts[0] == "main"
                || parts.iter().any(|p| p.contains("test"));
            (!skip).then_some((parts, file))
        })
        .collect();
    let known: BTreeSet<String> = modules.iter().map(|(p, _)| cut(p, depth)).collect();
    let mut graph = Graph::new();
    for (parts, file) in &modules {
        let me = cut(parts, depth);
        let text = fs::read_to_string(file)?;
        for path in imported_paths(&non_test_code(&text), parts) {
            // The longest prefix that is a module: `config::Config` is `config`.
            let target = (1..=path.len().min(depth))
                .rev()
                .map(|n| cut(&path, n))
                .find(|m| known.contains(m));
            if let Some(target) = target.filter(|t| *t != me) {
                graph.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    Ok(graph)
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn cut(parts: &[String], depth: usize) -> String {
    parts[..parts.len().min(depth)].join("::")
}

/// The file without its test module and without line comments.
fn non_test_code(text: &str) -> String {
    let end = text
        .find("#[cfg(test)]\nmod ")
        .or_else(|| text.find("#[cfg(test)]\npub(crate) mod "))
        .unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path the code names through `crate::` or `super::`, as a
/// path from the crate root, use-tree groups expanded (`crate::{a, b::{c,
/// d}}` names `a`, `b::c`, `b::d`). `me` is the file's module path.
fn imported_paths(code: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    loop {
        let next = [("crate::", false), ("super::", true)]
            .into_iter()
            .filter_map(|(kw, rel)| rest.find(kw).map(|i| (i, kw, rel)))
            .min();
        let Some((i, kw, relative)) = next else {
            break;
        };
        let preceded = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = &rest[i + kw.len()..];
        if preceded {
            continue; // `xban_crate::`, or the second `super::` of a chain
        }
        let mut base: Vec<String> = Vec::new();
        if relative {
            // `super::super::x` climbs twice.
            let mut up = 1;
            while let Some(r) = rest.strip_prefix("super::") {
                rest = r;
                up += 1;
            }
            base = me[..me.len().saturating_sub(up)].to_vec();
        }
        let (tree, len) = use_tree(rest);
        rest = &rest[len..];
        expand(&tree, &mut base, &mut out);
    }
    out
}

/// A parsed use tree: a path, optionally ending in a group of subtrees.
#[derive(Debug)]
struct Tree {
    path: Vec<String>,
    group: Vec<Tree>,
}

/// Parses the use tree at the start of `s`; returns it and the bytes read.
fn use_tree(s: &str) -> (Tree, usize) {
    let mut tree = Tree {
        path: Vec::new(),
        group: Vec::new(),
    };
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return (tree, (i + 1).min(b.len()));
                }
                let (sub, len) = use_tree(&s[i..]);
                tree.group.push(sub);
                i += len.max(1);
            }
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i == start {
            return (tree, i);
        }
        tree.path.push(s[start..i].to_string());
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            return (tree, i);
        }
    }
}

fn expand(tree: &Tree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let n = prefix.len();
    prefix.extend(tree.path.iter().cloned());
    if tree.group.is_empty() {
        if prefix.first().is_some_and(|p| p != "self") {
            out.push(prefix.clone());
        }
    } else {
        for sub in &tree.group {
            expand(sub, prefix, out);
        }
    }
    prefix.truncate(n);
}

/// The strongly connected components of more than one module: each is a
/// set of modules that import each other in a cycle.
pub(crate) fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_src() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src")
    }

    #[test]
    fn the_agents_modules_import_each_other_without_a_cycle() {
        for depth in [1, 2] {
            let graph = import_graph(&agent_src(), depth).unwrap();
            assert!(graph.len() > 10, "too few modules read: {graph:?}");
            let found = cycles(&graph);
            assert!(
                found.is_empty(),
                "module import cycles in agent/src at depth {depth} (see ARCHITECTURE.md): {found:?}"
            );
        }
    }

    #[test]
    fn a_cycle_is_found_through_groups_and_nested_modules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("engine")).unwrap();
        fs::write(root.join("lib.rs"), "pub mod config;\n").unwrap();
        fs::write(
            root.join("config.rs"),
            "use crate::{units::X, engine::{bans::B}};\n// crate::api in a comment\n",
        )
        .unwrap();
        fs::write(root.join("engine/mod.rs"), "mod bans;\nmod jails;\n").unwrap();
        fs::write(root.join("engine/jails.rs"), "use super::bans::B;\n").unwrap();
        fs::write(
            root.join("engine/bans.rs"),
            "fn f() { crate::config::load(); }\n",
        )
        .unwrap();
        fs::write(
            root.join("units.rs"),
            "#[cfg(test)]\nmod tests { use crate::config; }\n",
        )
        .unwrap();
        let graph = import_graph(root, 1).unwrap();
        assert_eq!(
            graph["config"],
            BTreeSet::from(["units".to_string(), "engine".to_string()])
        );
        assert!(!graph.contains_key("units"), "test code counted: {graph:?}");
        assert_eq!(
            cycles(&graph),
            vec![vec!["config".to_string(), "engine".to_string()]]
        );
        let deep = import_graph(root, 2).unwrap();
        assert_eq!(
            deep["engine::jails"],
            BTreeSet::from(["engine::bans".to_string()])
        );
        assert_eq!(
            cycles(&deep),
            vec![vec!["config".to_string(), "engine::bans".to_string()]]
        );
    }
}

//! The README's architecture, checked: which layer may name which. It reads every `src/**/*.rs` file and fails
//! when
//! - `src/domain/` names gRPC or HTTP crates (tonic, hyper, reqwest, http) or another layer of the service
//!   (`crate::store`, `crate::groove`, `crate::delivery`, `crate::api`): the rules stay pure;
//! - `src/admin/` names gRPC or HTTP client crates, the Groove client or `crate::api`: admin changes are
//!   domain operations on the store, which the gRPC layer only translates;
//! - `src/cli/` (commands that are clients of a server) names anything of the server but the generated
//!   contract (`crate::proto`): it must work as any client generated from `proto/` does;
//! - `src/groove/` (the Groove client and pacing) names a database crate, the store, delivery, api or admin:
//!   what it is told about other replicas comes from delivery as plain values;
//! - `src/api/` names the Groove client (`crate::groove`) or an HTTP client crate (hyper, reqwest): only
//!   delivery calls Groove.
//!
//! Every path is looked at, not only `use` lines: `use crate::{groove::X}`, a path written inline
//! (`crate::groove::GrooveAnswer { .. }`) and `super::super::groove` count alike. Comments do not.

use std::path::{Path, PathBuf};

/// What one layer (a directory under `src/`) must not name.
struct Rule {
    layer: &'static str,
    crates: &'static [&'static str],
    modules: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        layer: "domain",
        crates: &[
            "tonic",
            "tonic_types",
            "tonic_reflection",
            "tonic_health",
            "prost",
            "hyper",
            "hyper_util",
            "hyper_rustls",
            "reqwest",
            "http",
            "http_body_util",
            "rusqlite",
        ],
        modules: &["store", "groove", "delivery", "api"],
    },
    Rule {
        layer: "api",
        crates: &["hyper", "hyper_util", "hyper_rustls", "reqwest"],
        modules: &["groove"],
    },
    Rule {
        layer: "admin",
        crates: &[
            "tonic",
            "tonic_types",
            "tonic_reflection",
            "tonic_health",
            "prost",
            "hyper",
            "hyper_util",
            "hyper_rustls",
            "reqwest",
        ],
        modules: &["groove", "api"],
    },
    Rule {
        layer: "groove",
        crates: &["rusqlite", "tokio_postgres", "deadpool_postgres"],
        modules: &["store", "delivery", "api", "admin"],
    },
    Rule {
        layer: "cli",
        crates: &["rusqlite", "hyper", "hyper_util", "hyper_rustls", "reqwest"],
        modules: &[
            "store", "groove", "delivery", "domain", "api", "admin", "auth", "settings",
        ],
    },
];

/// One forbidden name found: `file:line: what`.
#[derive(Debug, PartialEq)]
struct Breach {
    file: String,
    line: usize,
    what: String,
}

/// The code of a file with comments blanked out (strings kept: a path in a string is not an import, but a
/// `//` inside one must not hide the rest of its line... it only can hide, never invent, a breach).
fn without_comments(source: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = 0usize;
    for line in source.lines() {
        let mut kept = String::new();
        let mut rest = line;
        loop {
            if in_block > 0 {
                match (rest.find("*/"), rest.find("/*")) {
                    (Some(end), Some(start)) if start < end => {
                        in_block += 1;
                        rest = &rest[start + 2..];
                    }
                    (Some(end), _) => {
                        in_block -= 1;
                        rest = &rest[end + 2..];
                    }
                    (None, _) => break,
                }
                continue;
            }
            match (rest.find("//"), rest.find("/*")) {
                (Some(line_comment), Some(block)) if line_comment < block => {
                    kept.push_str(&rest[..line_comment]);
                    break;
                }
                (_, Some(block)) => {
                    kept.push_str(&rest[..block]);
                    kept.push(' ');
                    in_block += 1;
                    rest = &rest[block + 2..];
                }
                (Some(line_comment), None) => {
                    kept.push_str(&rest[..line_comment]);
                    break;
                }
                (None, None) => {
                    kept.push_str(rest);
                    break;
                }
            }
        }
        lines.push(kept);
    }
    lines
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The path roots a line names: `x` for every `x::` not preceded by an identifier or `::`, and for
/// `crate::` (or `super::super::` one level down) the module after it, as `crate::m`, including each top-level
/// name of a `crate::{a::…, b}` group.
fn roots(line: &str, nested_once: bool) -> Vec<String> {
    let line = if nested_once {
        line.replace("super::super::", "crate::")
    } else {
        line.to_string()
    };
    let mut found = Vec::new();
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut index = 0;
    while index < chars.len() {
        let (start, c) = chars[index];
        let preceded = start > 0 && {
            let before = line[..start].chars().next_back().unwrap_or(' ');
            is_ident(before) || before == ':'
        };
        if is_ident(c) && !preceded {
            let end = line[start..]
                .find(|ch: char| !is_ident(ch))
                .map_or(line.len(), |offset| start + offset);
            let word = &line[start..end];
            let after = &line[end..];
            if let Some(path) = after.strip_prefix("::") {
                if word == "crate" {
                    let path = path.trim_start();
                    if let Some(group) = path.strip_prefix('{') {
                        // Each top-level item of the group: its first identifier.
                        let mut depth = 0;
                        let mut item = String::new();
                        let mut items = Vec::new();
                        for ch in group.chars() {
                            match ch {
                                '{' => depth += 1,
                                '}' if depth == 0 => break,
                                '}' => depth -= 1,
                                ',' if depth == 0 => {
                                    items.push(std::mem::take(&mut item));
                                    continue;
                                }
                                _ => {}
                            }
                            item.push(ch);
                        }
                        items.push(item);
                        for item in items {
                            let module: String = item
                                .trim_start()
                                .chars()
                                .take_while(|&ch| is_ident(ch))
                                .collect();
                            if !module.is_empty() {
                                found.push(format!("crate::{module}"));
                            }
                        }
                    } else {
                        let module: String = path.chars().take_while(|&ch| is_ident(ch)).collect();
                        found.push(format!("crate::{module}"));
                    }
                } else {
                    found.push(word.to_string());
                }
            } else if line[..start].trim_end().ends_with("use")
                && after.trim_start().starts_with(';')
            {
                // `use tonic;`
                found.push(word.to_string());
            }
            index += word.chars().count();
            continue;
        }
        index += 1;
    }
    found
}

/// Lines with each `use` statement that spans several lines joined into its first one, so that a group
/// (`use crate::{\n    store::Store,\n};`) is read as a whole; with the line number each starts on.
fn statements(lines: Vec<String>) -> Vec<(usize, String)> {
    let mut joined: Vec<(usize, String)> = Vec::new();
    let mut open = false;
    for (index, line) in lines.into_iter().enumerate() {
        if open {
            if let Some((_, statement)) = joined.last_mut() {
                statement.push(' ');
                statement.push_str(line.trim());
            }
        } else {
            joined.push((index, line.clone()));
            let trimmed = line.trim_start();
            let starts_use = trimmed.starts_with("use ")
                || (trimmed.starts_with("pub") && trimmed.contains(" use "));
            open = starts_use && !line.contains(';');
            continue;
        }
        open = !line.contains(';');
    }
    joined
}

/// The breaches of `rule` in one file's source; `nested_once` when the file is directly in the layer's
/// directory, where `super::super::` is the crate root.
fn check_source(file: &str, source: &str, rule: &Rule, nested_once: bool) -> Vec<Breach> {
    let mut breaches = Vec::new();
    for (number, line) in statements(without_comments(source)) {
        for root in roots(&line, nested_once) {
            let forbidden = match root.strip_prefix("crate::") {
                Some(module) => rule.modules.contains(&module),
                None => rule.crates.contains(&root.as_str()),
            };
            if forbidden {
                breaches.push(Breach {
                    file: file.to_string(),
                    line: number + 1,
                    what: root,
                });
            }
        }
    }
    breaches
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_layer_names_only_what_the_architecture_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut breaches = Vec::new();
    let mut checked = 0;
    for rule in RULES {
        let layer = src.join(rule.layer);
        let mut files = Vec::new();
        rust_files(&layer, &mut files);
        // The layer's root module file, when it is `src/<layer>.rs` rather than `src/<layer>/mod.rs`.
        let flat = src.join(format!("{}.rs", rule.layer));
        if flat.is_file() {
            files.push(flat);
        }
        assert!(
            !files.is_empty(),
            "no source files under {}",
            layer.display()
        );
        for file in files {
            let source = std::fs::read_to_string(&file).expect("read source file");
            let nested_once = file.parent() == Some(layer.as_path());
            let shown = file
                .strip_prefix(&src)
                .unwrap_or(&file)
                .display()
                .to_string();
            breaches.extend(check_source(&shown, &source, rule, nested_once));
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} files checked");
    assert!(
        breaches.is_empty(),
        "the layering in README \"Architecture\" is broken:\n{}",
        breaches
            .iter()
            .map(|breach| format!(
                "  src/{}:{}: names {}",
                breach.file, breach.line, breach.what
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker finds every way of naming a forbidden layer or crate, and nothing in comments or in allowed
/// paths: without this the test above could pass by seeing nothing.
#[test]
fn the_checker_finds_every_spelling_of_a_breach() {
    let domain = &RULES[0];
    let api = &RULES[1];
    let bad_domain = "\
use crate::groove::GrooveClient;
use crate::{domain::x, store::{Store, StoreError}};
use tonic::Status;
pub fn f() -> http::Method { todo!() }
fn g() { let _ = super::super::delivery::now_ms(); }
use reqwest;
use crate::{
    domain::y,
    api::{names, error},
};
";
    let found: Vec<String> = check_source("domain/x.rs", bad_domain, domain, true)
        .into_iter()
        .map(|breach| format!("{}:{}", breach.line, breach.what))
        .collect();
    assert_eq!(
        found,
        [
            "1:crate::groove",
            "2:crate::store",
            "3:tonic",
            "4:http",
            "5:crate::delivery",
            "6:reqwest",
            "7:crate::api"
        ]
    );

    let clean_domain = "\
//! Talks about crate::groove and tonic::Status in a comment.
use crate::domain::render::Renderer; // not crate::api
use super::call::PlannedCall;
/* crate::store::Store */ use url::Url;
const A: &str = \"https://example.com\";
fn h(x: my_http::Thing) -> crate::domain::call::PlannedCall { todo!() }
";
    assert_eq!(
        check_source("domain/y.rs", clean_domain, domain, true),
        Vec::new()
    );

    let bad_api = "\
use crate::delivery::Engine;
fn f(answer: crate::groove::GrooveAnswer) {}
use hyper::body::Incoming;
";
    let found: Vec<String> = check_source("api/x.rs", bad_api, api, true)
        .into_iter()
        .map(|breach| format!("{}:{}", breach.line, breach.what))
        .collect();
    assert_eq!(found, ["2:crate::groove", "3:hyper"]);
}

//! Scopes and definitions. The chain is builtins ← stdlib ← user file ←
//! model; a name is looked up innermost first, so a user definition may
//! shadow a stdlib one, but not another in the same scope.

use super::builtins::{self, Builtin};
use crate::diag::{self, code, Diagnostics};
use crate::syntax::ast::*;
use rustc_hash::FxHashMap as HashMap;

pub type ScopeId = usize;
pub type DefId = usize;

pub const BUILTINS: ScopeId = 0;
pub const STDLIB: ScopeId = 1;
pub const USER: ScopeId = 2;

#[derive(Clone, Copy, Debug)]
pub enum Def<'a> {
    Builtin(Builtin),
    Fn(&'a FnDef),
    Param(&'a ParamDecl),
    Input(&'a InputDecl),
    Let(&'a LetDecl),
    Output(&'a LetDecl),
    /// A model and the scope of its members.
    Model(&'a ModelDef, ScopeId),
}

#[derive(Clone, Debug)]
pub struct DefEntry<'a> {
    pub def: Def<'a>,
    /// The scope the definition lives in (its body sees that scope).
    pub scope: ScopeId,
    /// The name qualified by its model: `Mlp.w1`.
    pub qual: String,
}

#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub parent: Option<ScopeId>,
    pub names: HashMap<String, DefId>,
    /// `output` names: a separate namespace, so `output mse = mse(p, t)`
    /// names a result without hiding the function.
    pub outputs: HashMap<String, DefId>,
    /// Definitions in source order.
    pub order: Vec<DefId>,
    /// `Mlp.` inside a model, empty elsewhere.
    pub prefix: String,
}

pub struct Scopes<'a> {
    pub scopes: Vec<Scope>,
    pub defs: Vec<DefEntry<'a>>,
    /// The user's `train` block (at most one), with the scope its settings
    /// are evaluated in: its model's, or the file's.
    pub train: Option<(&'a TrainDef, ScopeId)>,
}

impl<'a> Scopes<'a> {
    pub fn lookup(&self, mut scope: ScopeId, name: &str) -> Option<DefId> {
        loop {
            let s = &self.scopes[scope];
            if let Some(&d) = s.names.get(name) {
                return Some(d);
            }
            scope = s.parent?;
        }
    }

    /// Every name visible from `scope`, for suggestions.
    pub fn visible(&self, mut scope: ScopeId) -> Vec<&str> {
        let mut out = Vec::new();
        loop {
            let s = &self.scopes[scope];
            out.extend(s.names.keys().map(|k| k.as_str()));
            match s.parent {
                Some(p) => scope = p,
                None => return out,
            }
        }
    }

    pub fn def(&self, id: DefId) -> &DefEntry<'a> {
        &self.defs[id]
    }
}

/// Builds the scopes of a program, reporting duplicate definitions.
pub fn build<'a>(stdlib: &'a [File], user: &'a File, diags: &mut Diagnostics) -> Scopes<'a> {
    let mut s = Scopes {
        scopes: vec![
            Scope::default(),
            Scope {
                parent: Some(BUILTINS),
                ..Scope::default()
            },
            Scope {
                parent: Some(STDLIB),
                ..Scope::default()
            },
        ],
        defs: Vec::new(),
        train: None,
    };
    for (name, b) in builtins::ALL {
        let id = s.defs.len();
        s.defs.push(DefEntry {
            def: Def::Builtin(*b),
            scope: BUILTINS,
            qual: name.to_string(),
        });
        s.scopes[BUILTINS].names.insert(name.to_string(), id);
        s.scopes[BUILTINS].order.push(id);
    }
    for f in stdlib {
        add_items(&mut s, STDLIB, &f.items, diags);
    }
    add_items(&mut s, USER, &user.items, diags);
    for item in &user.items {
        let Item::Train(t) = item else { continue };
        if let Some((first, _)) = s.train {
            diags.push(
                diag::error(code::DUPLICATE, "a file can have only one `train` block").with_labels(
                    vec![
                        t.span.primary("second `train` block"),
                        first.span.secondary("first one here"),
                    ],
                ),
            );
            continue;
        }
        let scope = match &t.model {
            None => USER,
            Some(m) => match s.scopes[USER].names.get(&m.name).map(|d| s.defs[*d].def) {
                Some(Def::Model(_, inner)) => inner,
                _ => {
                    let models: Vec<&str> = s.scopes[USER]
                        .names
                        .iter()
                        .filter(|(_, d)| matches!(s.defs[**d].def, Def::Model(..)))
                        .map(|(n, _)| n.as_str())
                        .collect();
                    let mut d =
                        diag::error(code::UNKNOWN_NAME, format!("no model named `{}`", m.name))
                            .with_labels(vec![m.span.primary("not a model in this file")]);
                    if let Some(sug) = diag::suggest(&m.name, models) {
                        d = d.with_notes(vec![format!("help: did you mean `{sug}`?")]);
                    }
                    diags.push(d);
                    // Its settings would only report names of the
                    // missing model: leave the block out.
                    continue;
                }
            },
        };
        s.train = Some((t, scope));
    }
    s
}

fn add_items<'a>(s: &mut Scopes<'a>, scope: ScopeId, items: &'a [Item], diags: &mut Diagnostics) {
    for item in items {
        let Some(name) = item.name() else {
            continue; // a `train` block, collected by `build`
        };
        let def = match item {
            Item::Train(_) => continue,
            Item::Fn(f) => Def::Fn(f),
            Item::Param(p) => Def::Param(p),
            Item::Input(i) => Def::Input(i),
            Item::Let(l) => Def::Let(l),
            Item::Output(l) => Def::Output(l),
            Item::Model(m) => {
                let inner = s.scopes.len();
                s.scopes.push(Scope {
                    parent: Some(scope),
                    prefix: format!("{}{}.", s.scopes[scope].prefix, m.name.name),
                    ..Scope::default()
                });
                Def::Model(m, inner)
            }
        };
        let is_output = matches!(item, Item::Output(_));
        let table = if is_output {
            &s.scopes[scope].outputs
        } else {
            &s.scopes[scope].names
        };
        if let Some(&prev) = table.get(&name.name) {
            let first = def_name_span(&s.defs[prev].def);
            let mut labels = vec![name.span.primary(format!("`{}` redefined here", name.name))];
            if let Some(sp) = first {
                labels.push(sp.secondary("first defined here"));
            }
            diags.push(
                diag::error(code::DUPLICATE, format!("`{}` is defined twice", name.name))
                    .with_labels(labels)
                    .with_notes(vec!["help: rename one of the definitions".into()]),
            );
            continue;
        }
        let id = s.defs.len();
        s.defs.push(DefEntry {
            def,
            scope,
            qual: format!("{}{}", s.scopes[scope].prefix, name.name),
        });
        let table = if is_output {
            &mut s.scopes[scope].outputs
        } else {
            &mut s.scopes[scope].names
        };
        table.insert(name.name.clone(), id);
        s.scopes[scope].order.push(id);
        if let Def::Model(m, inner) = def {
            add_items(s, inner, &m.items, diags);
        }
    }
}

pub fn def_name_span(def: &Def) -> Option<crate::diag::Span> {
    Some(match def {
        Def::Builtin(_) => return None,
        Def::Fn(f) => f.name.span,
        Def::Param(p) => p.name.span,
        Def::Input(i) => i.name.span,
        Def::Let(l) | Def::Output(l) => l.name.span,
        Def::Model(m, _) => m.name.span,
    })
}

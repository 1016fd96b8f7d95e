//! BuildKit's AST dump format (`parser.Node.Dump`): one S-expression per instruction, so kiln's
//! reading of a Dockerfile can be diffed against BuildKit's.

use super::ast::{Ast, Node};
use super::gostr::{go_quote, go_quote_slice};

/// The dump of a whole file, one line per instruction, with a final newline.
pub fn dump(ast: &Ast) -> String {
    let mut out = String::new();
    for node in &ast.nodes {
        out.push('(');
        out.push_str(&dump_node(node));
        out.push_str(")\n");
    }
    out
}

/// The dump of one instruction, without the outer parentheses.
pub fn dump_node(node: &Node) -> String {
    let mut s = node.keyword.to_lowercase();
    if !node.flags.is_empty() {
        s.push(' ');
        s.push_str(&go_quote_slice(&node.flags));
    }
    if let Some(sub) = &node.sub {
        s.push_str(" (");
        s.push_str(&dump_node(sub));
        s.push(')');
    }
    for arg in &node.args {
        s.push(' ');
        s.push_str(&go_quote(arg));
    }
    s.trim().to_string()
}

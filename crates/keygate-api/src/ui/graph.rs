//! The access graph page's drawing: the management API's graph (with its policy overlay) laid
//! out in three columns — applications, integrations, users — as an SVG the template renders
//! server-side, so the picture needs no script (`app.js` only highlights one node's edges), and
//! the same data as tables for screen readers and narrow windows.

use std::collections::HashMap;

use askama::Template;
use serde::Deserialize;

use super::pages::{Chrome, Notice};

/// The API's access graph, as the page reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphAnswer {
    pub nodes: Vec<GraphNodeRow>,
    pub edges: Vec<GraphEdgeRow>,
    #[serde(default)]
    pub policy_access: Vec<PolicyAccessRow>,
}

#[derive(Deserialize)]
pub struct GraphNodeRow {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
}

#[derive(Deserialize)]
pub struct GraphEdgeRow {
    pub from: String,
    pub to: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAccessRow {
    pub user_id: String,
    pub integration_id: String,
    pub summary: String,
    pub tools: Vec<ToolAccessRow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolAccessRow {
    pub name: String,
    pub decision: String,
    pub policy_ids: Vec<String>,
    #[serde(default)]
    pub applications: Vec<ApplicationDecisionRow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationDecisionRow {
    pub application_id: String,
    pub decision: String,
}

/// Width of the drawing's coordinate system (it scales to the window).
pub const WIDTH: u32 = 960;
const NODE_WIDTH: u32 = 220;
const ROW: u32 = 34;
const TOP: u32 = 40;
/// Longest label drawn in a box (the full name is its tooltip and in the tables).
const LABEL_CHARS: usize = 26;

/// A node's box in the drawing.
pub struct NodeBox {
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    pub label: String,
    pub x: u32,
    pub y: u32,
}

/// A line between two boxes.
pub struct EdgeLine {
    pub from: String,
    pub to: String,
    /// `attached`, `connected` or `policy-{summary}`.
    pub class: String,
    pub title: String,
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

/// One row of the policy table: a user, an integration and the decisions.
pub struct AccessRow {
    pub user: String,
    pub integration: String,
    pub summary: &'static str,
    pub tools: Vec<ToolAccessRow>,
}

/// An application with the integrations attached to it (for the table).
pub struct AttachedRow {
    pub application: String,
    pub integrations: Vec<String>,
}

/// An integration with the users connected to it (for the table).
pub struct ConnectedRow {
    pub integration: String,
    pub users: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/access_graph.html")]
pub struct AccessGraphPage {
    pub chrome: Chrome,
    pub notice: Option<Notice>,
    pub width: u32,
    pub height: u32,
    pub nodes: Vec<NodeBox>,
    pub edges: Vec<EdgeLine>,
    pub attached: Vec<AttachedRow>,
    pub connected: Vec<ConnectedRow>,
    pub access: Vec<AccessRow>,
    /// Whether any enabled policy applies (else everything is allowed).
    pub governed: bool,
    pub counts: (usize, usize, usize),
}

/// Words for an overlay summary.
pub fn summary_words(summary: &str) -> &'static str {
    match summary {
        "all_allowed" => "all allowed (no enabled policy)",
        "allowed" => "allowed",
        "denied" => "denied",
        "partial" => "partly allowed",
        "no_tools_known" => "tools not listed yet",
        _ => "unknown",
    }
}

/// Words for one tool's decision.
pub fn decision_words(decision: &str) -> &'static str {
    match decision {
        "allow" => "allowed",
        "deny" => "denied",
        "depends_on_arguments" => "depends on arguments",
        "varies_by_application" => "depends on the application",
        _ => "unknown",
    }
}

fn label(name: &str) -> String {
    if name.chars().count() <= LABEL_CHARS {
        return name.to_owned();
    }
    let mut short: String = name.chars().take(LABEL_CHARS - 1).collect();
    short.push('…');
    short
}

fn column_x(kind: &str) -> u32 {
    match kind {
        "application" => 0,
        "integration" => (WIDTH - NODE_WIDTH) / 2,
        _ => WIDTH - NODE_WIDTH,
    }
}

impl AccessGraphPage {
    /// Lays out `graph` for `chrome`'s page.
    /// `policy_names` names the policies the overlay cites by id.
    pub fn new(
        chrome: Chrome,
        notice: Option<Notice>,
        graph: GraphAnswer,
        policy_names: &HashMap<String, String>,
    ) -> Self {
        let mut rows: HashMap<&str, u32> = HashMap::new();
        let mut nodes = Vec::with_capacity(graph.nodes.len());
        for n in &graph.nodes {
            let kind = match n.kind.as_str() {
                "application" => "application",
                "integration" => "integration",
                _ => "user",
            };
            let row = rows.entry(kind).or_default();
            nodes.push(NodeBox {
                id: n.id.clone(),
                kind,
                name: n.name.clone(),
                label: label(&n.name),
                x: column_x(kind),
                y: TOP + *row * ROW,
            });
            *row += 1;
        }
        let tallest = rows.values().copied().max().unwrap_or(0).max(1);
        let height = TOP + tallest * ROW + 10;
        let at: HashMap<&str, &NodeBox> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let name_of = |id: &str| at.get(id).map_or_else(|| id.to_owned(), |n| n.name.clone());
        let mut edges = Vec::new();
        // Every edge runs between an outer column and the middle one (integrations).
        let mut line = |outer: &NodeBox, middle: &NodeBox, class: String, title: String| {
            let (x1, x2) = if outer.x < middle.x {
                (outer.x + NODE_WIDTH, middle.x)
            } else {
                (outer.x, middle.x + NODE_WIDTH)
            };
            edges.push(EdgeLine {
                from: outer.id.clone(),
                to: middle.id.clone(),
                class,
                title,
                x1,
                y1: outer.y + ROW / 2 - 4,
                x2,
                y2: middle.y + ROW / 2 - 4,
            });
        };
        for e in &graph.edges {
            let (Some(from), Some(to)) = (at.get(e.from.as_str()), at.get(e.to.as_str())) else {
                continue;
            };
            let kind = if e.kind == "attached" {
                "attached"
            } else {
                "connected"
            };
            let title = format!("{} {} {}", from.name, kind_words(kind), to.name);
            line(from, to, kind.to_owned(), title);
        }
        let governed = graph
            .policy_access
            .iter()
            .any(|a| a.summary != "all_allowed");
        let mut access = Vec::new();
        for a in graph.policy_access {
            let summary = summary_key(&a.summary);
            if governed
                && let (Some(user), Some(integration)) = (
                    at.get(a.user_id.as_str()),
                    at.get(a.integration_id.as_str()),
                )
            {
                let title = format!(
                    "policies for {} on {}: {}",
                    user.name,
                    integration.name,
                    summary_words(summary)
                );
                line(user, integration, format!("policy policy-{summary}"), title);
            }
            access.push(AccessRow {
                user: name_of(&a.user_id),
                integration: name_of(&a.integration_id),
                summary,
                tools: a
                    .tools
                    .into_iter()
                    .map(|mut t| {
                        for id in &mut t.policy_ids {
                            if let Some(name) = policy_names.get(id) {
                                *id = format!("“{name}”");
                            }
                        }
                        for d in &mut t.applications {
                            d.application_id = name_of(&d.application_id);
                        }
                        t
                    })
                    .collect(),
            });
        }
        let attached = tables(&nodes, &graph.edges, "application", "attached", true);
        let connected = tables(&nodes, &graph.edges, "integration", "connected", false);
        let count = |k: &str| nodes.iter().filter(|n| n.kind == k).count();
        let counts = (count("application"), count("integration"), count("user"));
        Self {
            chrome,
            notice,
            width: WIDTH,
            height,
            edges,
            attached: attached
                .into_iter()
                .map(|(application, integrations)| AttachedRow {
                    application,
                    integrations,
                })
                .collect(),
            connected: connected
                .into_iter()
                .map(|(integration, users)| ConnectedRow { integration, users })
                .collect(),
            nodes,
            access,
            governed,
            counts,
        }
    }

    pub fn node_width(&self) -> u32 {
        NODE_WIDTH
    }

    pub fn box_height(&self) -> u32 {
        ROW - 8
    }
}

/// For each node of `kind`, the names at the other end of its `edge_kind` edges (`outgoing`:
/// the node is the edge's `from`, else its `to`).
fn tables(
    nodes: &[NodeBox],
    edges: &[GraphEdgeRow],
    kind: &str,
    edge_kind: &str,
    outgoing: bool,
) -> Vec<(String, Vec<String>)> {
    let names: HashMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.name.as_str()))
        .collect();
    nodes
        .iter()
        .filter(|n| n.kind == kind)
        .map(|n| {
            let others = edges
                .iter()
                .filter(|e| e.kind == edge_kind)
                .filter_map(|e| match outgoing {
                    true if e.from == n.id => names.get(e.to.as_str()),
                    false if e.to == n.id => names.get(e.from.as_str()),
                    _ => None,
                })
                .map(|s| (*s).to_owned())
                .collect();
            (n.name.clone(), others)
        })
        .collect()
}

fn kind_words(kind: &str) -> &'static str {
    if kind == "attached" {
        "has attached"
    } else {
        "is connected to"
    }
}

/// The overlay summaries the page knows (anything else is `unknown`).
fn summary_key(summary: &str) -> &'static str {
    match summary {
        "all_allowed" => "all_allowed",
        "allowed" => "allowed",
        "denied" => "denied",
        "partial" => "partial",
        "no_tools_known" => "no_tools_known",
        _ => "unknown",
    }
}

impl AccessGraphPage {
    pub fn summary_words(&self, summary: &str) -> &'static str {
        summary_words(summary)
    }

    pub fn decision_words(&self, decision: &str) -> &'static str {
        decision_words(decision)
    }
}

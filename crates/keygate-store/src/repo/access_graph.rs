//! The organization's access graph: applications, integrations, users and their edges.

use keygate_core::OrgId;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{Result, Store};

/// A node of the access graph.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct GraphNode {
    pub id: String,
    /// `application`, `integration` or `user`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
}

/// An edge: an application `attached` to an integration, or a user `connected` to one.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    /// `attached` or `connected`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
}

/// The whole graph.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AccessGraph {
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

impl Store {
    /// Builds the graph. With `include_policy`, nodes and edges carry the computed policy:
    /// each integration's `authMode`, and on `attached` edges whether using it needs a
    /// per-user connection.
    pub async fn access_graph(&self, org: OrgId, include_policy: bool) -> Result<AccessGraph> {
        let apps = self.all_applications(org).await?;
        let integrations = self.list_all_integrations(org).await?;
        let users = self.list_users(org).await?;
        let connections = self.all_connections(org).await?;
        let mut attachments: std::collections::HashMap<_, Vec<_>> =
            std::collections::HashMap::new();
        for (app, integration) in self.all_attachments(org).await? {
            attachments.entry(app).or_default().push(integration);
        }
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        for app in &apps {
            nodes.push(GraphNode {
                id: app.id.to_string(),
                kind: "application",
                name: app.name.clone(),
                policy: None,
            });
            for integration_id in attachments.remove(&app.id).unwrap_or_default() {
                let needs_user = integrations
                    .iter()
                    .find(|i| i.id == integration_id)
                    .is_some_and(|i| i.auth_mode.is_per_user());
                edges.push(GraphEdge {
                    from: app.id.to_string(),
                    to: integration_id.to_string(),
                    kind: "attached",
                    policy: include_policy
                        .then(|| serde_json::json!({"requiresUserConnection": needs_user})),
                });
            }
        }
        for i in &integrations {
            nodes.push(GraphNode {
                id: i.id.to_string(),
                kind: "integration",
                name: i.name.clone(),
                policy: include_policy
                    .then(|| serde_json::json!({"authMode": i.auth_mode, "category": i.category})),
            });
        }
        for u in &users {
            nodes.push(GraphNode {
                id: u.id.to_string(),
                kind: "user",
                name: u.email.clone(),
                policy: include_policy.then(|| serde_json::json!({"role": u.role})),
            });
        }
        for c in connections
            .iter()
            .filter(|c| integrations.iter().any(|i| i.id == c.integration_id))
        {
            edges.push(GraphEdge {
                from: c.user_id.to_string(),
                to: c.integration_id.to_string(),
                kind: "connected",
                policy: include_policy.then(|| serde_json::json!({"connectionKind": c.kind})),
            });
        }
        Ok(AccessGraph { nodes, edges })
    }

    /// Every (unarchived) integration of `org`, all pages.
    pub async fn list_all_integrations(
        &self,
        org: OrgId,
    ) -> Result<Vec<keygate_core::model::Integration>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .list_integrations(org, None, crate::PageRequest { limit: 200, after })
                .await?;
            all.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }
}

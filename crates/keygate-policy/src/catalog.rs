//! The tools the gateway has seen each integration list, with their annotations: what a
//! `tools/call` (which names only the tool) is judged with, and what the access graph's policy
//! overlay decides over. Upstream data, not store data: each list answer replaces what its
//! integration had, and nothing survives a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use keygate_core::IntegrationId;
use serde_json::Value;

use crate::Annotations;

/// Most remembered tools over all integrations; past it, the catalog starts over.
const MAX_TOOLS: usize = 100_000;

/// Listed tools per integration (shared by the proxy, which fills it, and the API).
#[derive(Debug, Default)]
pub struct ToolCatalog {
    tools: RwLock<HashMap<IntegrationId, BTreeMap<String, Annotations>>>,
}

impl ToolCatalog {
    /// Remembers the tools of one `tools/list` answer of `integration` (its `tools` items).
    pub fn remember(&self, integration: IntegrationId, listed: &[Value]) {
        let named: BTreeMap<String, Annotations> = listed
            .iter()
            .filter_map(|t| {
                let name = t["name"].as_str()?;
                Some((name.to_owned(), Annotations::of_listed(t)))
            })
            .collect();
        let mut tools = self.tools.write().unwrap_or_else(|p| p.into_inner());
        let held: usize = tools.values().map(BTreeMap::len).sum();
        if held + named.len() > MAX_TOOLS {
            tools.clear();
        }
        // A page of a paginated list adds to what the integration had.
        tools.entry(integration).or_default().extend(named);
    }

    /// The remembered annotations of `integration`'s tool `name`.
    pub fn annotations(&self, integration: IntegrationId, name: &str) -> Option<Annotations> {
        let tools = self.tools.read().unwrap_or_else(|p| p.into_inner());
        tools.get(&integration)?.get(name).copied()
    }

    /// Every tool `integration` has listed, by name.
    pub fn tools_of(&self, integration: IntegrationId) -> Vec<(String, Annotations)> {
        let tools = self.tools.read().unwrap_or_else(|p| p.into_inner());
        tools
            .get(&integration)
            .map(|t| t.iter().map(|(n, a)| (n.clone(), *a)).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_listed_tools_with_their_hints() {
        let catalog = ToolCatalog::default();
        let id = IntegrationId::new();
        catalog.remember(
            id,
            &[
                serde_json::json!({"name": "read", "annotations": {"readOnlyHint": true}}),
                serde_json::json!({"name": "wipe"}),
                serde_json::json!({"title": "no name"}),
            ],
        );
        let tools = catalog.tools_of(id);
        assert_eq!(tools.len(), 2);
        assert!(catalog.annotations(id, "read").unwrap().read_only_hint);
        assert!(catalog.annotations(id, "wipe").unwrap().destructive_hint);
        assert!(catalog.tools_of(IntegrationId::new()).is_empty());
    }
}

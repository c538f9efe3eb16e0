//! `[cluster]`: which store the node shares rooms through, and who the node is.

use serde::Deserialize;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]` (or `rediss://`) of the shared store; empty: one node, an
    /// in-memory store (the single-node behaviour).
    pub redis_url: String,
    /// This node's id in the registry (letters, digits, `.`, `_`, `-`; at most 64). Empty: the
    /// host name, or a random id when it has none usable.
    pub node_id: String,
    /// Region this node serves; a new room is placed on a node of the region of the node it
    /// was asked on. Empty: the default region.
    pub region: String,
    /// Rooms this node takes by placement (its headroom): a node at this many rooms gets no
    /// new ones from other nodes. Rooms it already holds always accept joins.
    pub max_rooms: usize,
}

/// Longest node id.
pub const MAX_NODE_ID: usize = 64;

impl ClusterConfig {
    /// Whether the node runs in a cluster (a Redis URL is set).
    pub fn clustered(&self) -> bool {
        !self.redis_url.trim().is_empty()
    }

    /// Checks the keys; `public_url` is `http.public_url`, which every clustered node needs
    /// (redirects name it).
    pub fn check(&self, public_url: &str) -> Result<(), String> {
        if !self.node_id.is_empty() {
            check_node_id(&self.node_id)?;
        }
        if self.max_rooms == 0 {
            return Err("cluster.max_rooms is 0; give the rooms this node may hold".into());
        }
        if !self.clustered() {
            return Ok(());
        }
        let url = self.redis_url.trim();
        redis::Client::open(url).map_err(|e| {
            format!(
                "cluster.redis_url is not a usable Redis URL (redis://host:port[/db]): {}",
                e.kind_name_or_detail()
            )
        })?;
        let p = public_url.trim();
        if !(p.starts_with("http://") || p.starts_with("https://")) {
            return Err(format!(
                "http.public_url = {p:?}: a clustered node (cluster.redis_url set) needs its \
                 public base URL (http:// or https://), which other nodes redirect clients to"
            ));
        }
        Ok(())
    }

    /// The node id in force: `node_id`, else the host name (when it is a valid id), else a
    /// random one.
    pub fn resolved_node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        if check_node_id(&host).is_ok() {
            return host;
        }
        format!("node-{}", crate::http::random_token(10).to_lowercase())
    }
}

/// Checks a node id: 1 to 64 of letters, digits, `.`, `_`, `-`.
pub fn check_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster.node_id = {id:?}: use 1 to {MAX_NODE_ID} letters, digits, '.', '_' or '-'"
        ))
    }
}

/// A Redis error's message without the URL (which may carry a password).
trait Detail {
    fn kind_name_or_detail(&self) -> String;
}

impl Detail for redis::RedisError {
    fn kind_name_or_detail(&self) -> String {
        match self.detail() {
            Some(d) => format!("{} ({d})", self.category()),
            None => self.category().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ClusterConfig {
        ClusterConfig {
            redis_url: url.into(),
            node_id: String::new(),
            region: String::new(),
            max_rooms: 10,
        }
    }

    #[test]
    fn malformed_redis_url_and_missing_public_url_are_refused() {
        assert!(cfg("").check("").is_ok());
        let e = cfg("http://nope").check("http://a:1").unwrap_err();
        assert!(e.contains("cluster.redis_url"), "{e}");
        let e = cfg("redis://127.0.0.1:1").check("").unwrap_err();
        assert!(e.contains("http.public_url"), "{e}");
        assert!(cfg("redis://127.0.0.1:1/0").check("http://a:1").is_ok());
    }

    #[test]
    fn node_ids_are_checked_and_resolved() {
        assert!(check_node_id("node-a.1_x").is_ok());
        assert!(check_node_id("a b").is_err());
        assert!(check_node_id(&"x".repeat(65)).is_err());
        let id = cfg("").resolved_node_id();
        assert!(check_node_id(&id).is_ok(), "{id}");
    }
}

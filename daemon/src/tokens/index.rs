//! In-memory indexes over the issued-token records, so that Revoke and List read only the records they
//! concern instead of scanning every token ever issued (the scan made both linear in the tokens still
//! stored: Revoke 1.1 ms → 12.8 ms, List 10 ms → 231 ms from 1k to 20k tokens).
//!
//! Built from one scan of the issued tree when the service opens; kept in step with the tree by the
//! service: an entry is added once a record is written (mint) and removed once it is purged. The tree
//! stays the truth: a reader that finds an id here whose record is gone (purged in between) skips it.

use std::collections::{BTreeSet, HashMap};

use super::TokenRecord;

#[derive(Debug, Default)]
pub(crate) struct TokenIndex {
    /// Principal (holder) → ids of the tokens issued to it.
    by_principal: HashMap<String, BTreeSet<String>>,
    /// Issuer → ids of the tokens it issued.
    by_issuer: HashMap<String, BTreeSet<String>>,
    /// Token id → ids of the tokens derived from it, at any depth (they list it among their parents).
    derived: HashMap<String, BTreeSet<String>>,
}

impl TokenIndex {
    pub(crate) fn insert(&mut self, record: &TokenRecord) {
        let id = &record.id;
        add(&mut self.by_principal, &record.principal, id);
        add(&mut self.by_issuer, &record.issuer, id);
        for parent in &record.parents {
            add(&mut self.derived, parent, id);
        }
    }

    pub(crate) fn remove(&mut self, record: &TokenRecord) {
        let id = &record.id;
        take(&mut self.by_principal, &record.principal, id);
        take(&mut self.by_issuer, &record.issuer, id);
        for parent in &record.parents {
            take(&mut self.derived, parent, id);
        }
    }

    /// How many stored tokens are derived from `id`.
    pub(crate) fn derived_count(&self, id: &str) -> usize {
        self.derived.get(id).map_or(0, BTreeSet::len)
    }

    /// The ids of the tokens issued to `principal`.
    pub(crate) fn held_by(&self, principal: &str) -> Vec<String> {
        ids(&self.by_principal, principal).cloned().collect()
    }

    /// The ids of the tokens issued to or by `principal`, each once.
    pub(crate) fn held_or_issued_by(&self, principal: &str) -> Vec<String> {
        let held = ids(&self.by_principal, principal);
        let issued = ids(&self.by_issuer, principal);
        held.chain(issued)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect()
    }
}

fn ids<'a>(
    map: &'a HashMap<String, BTreeSet<String>>,
    key: &str,
) -> impl Iterator<Item = &'a String> {
    map.get(key).into_iter().flatten()
}

fn add(map: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    map.entry(key.to_owned()).or_default().insert(id.to_owned());
}

fn take(map: &mut HashMap<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, principal: &str, issuer: &str, parents: &[&str]) -> TokenRecord {
        TokenRecord {
            id: id.to_owned(),
            principal: principal.to_owned(),
            issuer: issuer.to_owned(),
            capabilities: vec!["admin.status".to_owned()],
            issued_at: 1,
            expires_at: 2,
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
            key_id: "k1".to_owned(),
        }
    }

    #[test]
    fn lookups_follow_inserts_and_removals() {
        let mut index = TokenIndex::default();
        let root = record("a", "web", "admin", &[]);
        let child = record("b", "worker", "web", &["a"]);
        let grandchild = record("c", "web", "worker", &["a", "b"]);
        for r in [&root, &child, &grandchild] {
            index.insert(r);
        }
        assert_eq!(index.derived_count("a"), 2);
        assert_eq!(index.derived_count("b"), 1);
        assert_eq!(index.derived_count("c"), 0);
        assert_eq!(index.held_by("web"), ["a", "c"]);
        assert_eq!(index.held_or_issued_by("web"), ["a", "b", "c"]);
        assert_eq!(index.held_or_issued_by("nobody"), Vec::<String>::new());

        index.remove(&grandchild);
        assert_eq!(index.derived_count("a"), 1);
        assert_eq!(index.held_by("web"), ["a"]);
        index.remove(&child);
        index.remove(&root);
        assert!(index.by_principal.is_empty() && index.by_issuer.is_empty());
        assert!(index.derived.is_empty());
    }
}

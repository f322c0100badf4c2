//! Which node owns a repository: rendezvous (highest random weight) hashing over the live
//! nodes. Deterministic for a given set of node ids, and adding a node moves only the
//! repositories it wins, about 1/N of them.

/// The owner of `task_id` among `nodes`, or `None` when there are none.
pub fn owner<'a>(task_id: &str, nodes: &'a [String]) -> Option<&'a String> {
    nodes
        .iter()
        .max_by_key(|node| (weight(node, task_id), node.as_str()))
}

fn weight(node: &str, task_id: &str) -> u64 {
    // FNV-1a over node, a separator and the task, then a 64-bit finaliser (splitmix64) so that
    // similar ids spread evenly.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(task_id.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect()
    }

    #[test]
    fn spreads_evenly_and_moves_about_one_nth_when_a_node_joins() {
        let tasks = ids(30_000);
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let four: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let mut per_node = std::collections::HashMap::new();
        let mut moved = 0;
        for t in &tasks {
            let before = owner(t, &three).expect("owner");
            *per_node.entry(before.clone()).or_insert(0usize) += 1;
            let after = owner(t, &four).expect("owner");
            if before != after {
                assert_eq!(after, "d", "a task moved between old nodes");
                moved += 1;
            }
        }
        for count in per_node.values() {
            assert!((9_000..11_000).contains(count), "{per_node:?}");
        }
        // About 1/4 of the tasks move, all of them to the new node.
        assert!((6_500..8_500).contains(&moved), "{moved}");
    }

    #[test]
    fn is_independent_of_node_order() {
        let a: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        let b: Vec<String> = ["z", "x", "y"].map(String::from).to_vec();
        for t in ids(100) {
            assert_eq!(owner(&t, &a), owner(&t, &b));
        }
        assert_eq!(owner("t", &[]), None);
    }
}

//! `shard(accountId)`: the one function that decides which shard queue — and so which single
//! writer — owns an account. Changing it, or the shard count, would reorder commands of live
//! accounts, which is why the shard count is recorded in PostgreSQL and checked at start.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of the bytes: stable across platforms, releases and languages.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard that owns `account_id` among `shard_count` shards (`shard_count` > 0).
pub fn shard_of(account_id: &str, shard_count: u16) -> u16 {
    let k = u64::from(shard_count.max(1));
    // The remainder is < shard_count, which fits in u16.
    (fnv1a64(account_id.as_bytes()) % k) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shard_is_stable_and_in_range() {
        for k in [1u16, 2, 8, 64] {
            for i in 0..1000 {
                let id = format!("acc-{i}");
                let s = shard_of(&id, k);
                assert!(s < k);
                assert_eq!(s, shard_of(&id, k));
            }
        }
    }

    #[test]
    fn shards_spread_accounts() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_of(&format!("acc-{i}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}

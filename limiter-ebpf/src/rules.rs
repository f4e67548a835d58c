//! The rule tries and the lookups on them. Userspace stores in each entry the latest deadline
//! of that prefix and of every shorter prefix of the same kind covering it, so the longest
//! match alone answers (see `limiter_common::BlockRule`).

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{helpers::bpf_map_lookup_elem, macros::map, maps::LpmTrie};
use limiter_common::{
    AllowRule, BlockRule, SourceAddr, TrustedProxy, LPM_KEY_BYTES, RULE_CAPACITY,
};

#[map]
static BLOCK_RULES: LpmTrie<[u32; 4], BlockRule> = LpmTrie::with_max_entries(RULE_CAPACITY, 0);

#[map]
static ALLOW_RULES: LpmTrie<[u32; 4], AllowRule> = LpmTrie::with_max_entries(RULE_CAPACITY, 0);

/// Trusted proxies: sources whose requests belong to the clients they name.
#[map]
static TRUSTED_PROXIES: LpmTrie<[u32; 4], TrustedProxy> =
    LpmTrie::with_max_entries(RULE_CAPACITY, 0);

/// Whether `src` is a trusted proxy.
#[inline(always)]
pub fn is_trusted_proxy(src: &SourceAddr) -> bool {
    let mut key = MaybeUninit::uninit();
    TrieKey::write_host(&mut key, src);
    trie_lookup(&TRUSTED_PROXIES, &key).is_some()
}

/// What the rules say about a source on the protected ports, as deadlines in jiffies.
#[derive(Clone, Copy, Default)]
pub struct Verdict {
    pub blocked_until: u64,
    pub allowed_until: u64,
    /// `SOURCE_*` flags (whether the source is a trusted proxy).
    pub flags: u16,
}

/// Both tries, for the protected ports.
#[inline(always)]
pub fn lookup(src: &SourceAddr) -> Verdict {
    let mut key = MaybeUninit::uninit();
    TrieKey::write_host(&mut key, src);
    let blocked_until = trie_lookup(&BLOCK_RULES, &key).map_or(0, |b| b.until_protected);
    // The allow trie only matters against a block.
    let allowed_until = if blocked_until != 0 {
        trie_lookup(&ALLOW_RULES, &key).map_or(0, |a| a.until)
    } else {
        0
    };
    Verdict {
        blocked_until,
        allowed_until,
        flags: 0,
    }
}

/// Whether an allow rule covers `src` now (whether or not a block does).
#[inline(always)]
pub fn allowed(src: &SourceAddr, now: u64) -> bool {
    let mut key = MaybeUninit::uninit();
    TrieKey::write_host(&mut key, src);
    trie_lookup(&ALLOW_RULES, &key).is_some_and(|a| now < a.until)
}

/// Whether an "all ports" block covers `src` now, and no allow rule exempts it.
#[inline(always)]
pub fn blocked_on_any_port(src: &SourceAddr, now: u64) -> bool {
    let mut key = MaybeUninit::uninit();
    TrieKey::write_host(&mut key, src);
    trie_lookup(&BLOCK_RULES, &key).is_some_and(|b| now < b.until_any_port)
        && !trie_lookup(&ALLOW_RULES, &key).is_some_and(|a| now < a.until)
}

/// A trie key for a full address, laid out as the kernel's `bpf_lpm_trie_key_u8` with 16
/// data bytes (the trie reads the first 20 bytes).
///
/// aya's `Key` is packed, with the address at offset 4; with misaligned loads enabled, LLVM
/// merges its stores into 8-byte stores at offset 4, and the verifier rejects misaligned
/// stack access. This key is filled with volatile 4-byte stores, which LLVM does not merge,
/// in an 8-byte-aligned slot.
#[repr(C, align(8))]
struct TrieKey {
    words: [u32; 6],
}

// The trie reads the first five words: the length and the address, as the maps' spec says.
const _: () = assert!(5 * core::mem::size_of::<u32>() == LPM_KEY_BYTES as usize);

impl TrieKey {
    /// Writes the /128 key for `src` into `slot` in place: a returned key would be copied,
    /// and LLVM merges the copy into misaligned 8-byte stores.
    #[inline(always)]
    fn write_host(slot: &mut MaybeUninit<TrieKey>, src: &SourceAddr) {
        let [first, second] = src.words;
        let values = [
            128,
            first as u32,
            (first >> 32) as u32,
            second as u32,
            (second >> 32) as u32,
        ];
        let words = slot.as_mut_ptr() as *mut u32;
        for (i, value) in values.into_iter().enumerate() {
            // SAFETY: i < 5 < 6 slots of the key; the sixth is padding the trie never reads.
            unsafe { words.add(i).write_volatile(value) };
        }
    }
}

#[inline(always)]
fn trie_lookup<'a, V>(trie: &'a LpmTrie<[u32; 4], V>, key: &MaybeUninit<TrieKey>) -> Option<&'a V> {
    // SAFETY: LpmTrie is a transparent wrapper over the map definition the helper expects,
    // and `key` holds (initialised by write_host) the 20 bytes the trie's key size asks for.
    let value = unsafe {
        bpf_map_lookup_elem(
            trie as *const _ as *mut c_void,
            key.as_ptr() as *const c_void,
        )
    };
    // SAFETY: a non-null result points at a live value of the map's value type.
    unsafe { (value as *const V).as_ref() }
}

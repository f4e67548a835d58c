//! The maps behind what the kernel knows of image creates: the budget it holds every source
//! to, whether it records creates for the egress program to count Glance's answers to, and,
//! per source, the creates refused over budget and those Glance answered.

use std::{collections::HashMap, net::IpAddr};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError};
use ipnet::IpNet;
use limiter_common::{
    BudgetConfig, SourceAddr, SourceCreates, SourceStats, BUDGET_CONFIG_MAP,
    CONFIG_COUNT_RESPONSES, CONFIG_IMAGE_CREATE_BUDGET, CREATES_MAP, SOURCES_MAP,
};

use super::{
    maps::{map_err, map_mut, map_ref, read_by_address, set_config_flag},
    Limiter, LoaderError,
};

impl Limiter {
    /// Holds every source's image creates to `budget` (see `crate::budget`), or to none.
    pub fn set_image_create_budget(
        &mut self,
        budget: Option<BudgetConfig>,
    ) -> Result<(), LoaderError> {
        // The flag goes on after the budget is written and off before it is cleared, so the
        // program never charges against a half-written one.
        if budget.is_none() {
            set_config_flag(&mut self.ebpf, CONFIG_IMAGE_CREATE_BUDGET, false)?;
        }
        let mut array: Array<&mut MapData, BudgetConfig> =
            Array::try_from(map_mut(&mut self.ebpf, BUDGET_CONFIG_MAP)?)
                .map_err(map_err(BUDGET_CONFIG_MAP, "open"))?;
        array
            .set(0, budget.unwrap_or_default(), 0)
            .map_err(map_err(BUDGET_CONFIG_MAP, "write"))?;
        if budget.is_some() {
            set_config_flag(&mut self.ebpf, CONFIG_IMAGE_CREATE_BUDGET, true)?;
        }
        Ok(())
    }

    /// Gives every source within `prefixes` whose budget is spent a whole budget again (an
    /// unblocked source is forgiven: its creates before the ban would otherwise keep its
    /// creates refused). The budget's time is in the source's row, which only the program
    /// writes (a write from here would lose the counts it adds meanwhile), so the source's
    /// `CREATES` entry is marked forgiven now (entered if it has none) and the program starts
    /// its budget afresh at its next create over budget, if that comes before what it spent
    /// has run out anyway. Returns how many sources were marked.
    pub fn forgive_budgets(&mut self, prefixes: &[IpNet]) -> Result<usize, LoaderError> {
        let now = self.jiffies()?;
        let spent = self.sources_spending_within(prefixes)?;
        let mut table: BpfHashMap<&mut MapData, SourceAddr, SourceCreates> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, CREATES_MAP)?)
                .map_err(map_err(CREATES_MAP, "open"))?;
        for key in &spent {
            // The entry as it is (its counts kept), or a new one. A count the program adds
            // between the read and the write is lost: one at most, on an unblock.
            let entry = match table.get(key, 0) {
                Ok(entry) => entry,
                Err(MapError::KeyNotFound) => SourceCreates::default(),
                Err(e) => return Err(map_err(CREATES_MAP, "read")(e)),
            };
            table
                .insert(
                    key,
                    SourceCreates {
                        forgiven_at: now,
                        ..entry
                    },
                    0,
                )
                .map_err(map_err(CREATES_MAP, "write"))?;
        }
        Ok(spent.len())
    }

    /// The sources within `prefixes` whose row holds a budget time (they created). A host
    /// prefix is one lookup; a wider one reads the whole table (an `unblock` is rare).
    fn sources_spending_within(&self, prefixes: &[IpNet]) -> Result<Vec<SourceAddr>, LoaderError> {
        let table: BpfHashMap<&MapData, SourceAddr, SourceStats> =
            BpfHashMap::try_from(map_ref(&self.ebpf, SOURCES_MAP)?)
                .map_err(map_err(SOURCES_MAP, "open"))?;
        let key_of = |addr: IpAddr| SourceAddr::from_octets(crate::net::addr_to_key(addr));
        let spending = |stats: &SourceStats| stats.budget_time() != 0;
        if prefixes
            .iter()
            .all(|p| p.prefix_len() == p.max_prefix_len())
        {
            let mut keys = Vec::new();
            for prefix in prefixes {
                let key = key_of(prefix.addr());
                match table.get(&key, 0) {
                    Ok(stats) if spending(&stats) => keys.push(key),
                    Ok(_) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(SOURCES_MAP, "read")(e)),
                }
            }
            return Ok(keys);
        }
        Ok(self
            .sources_batched()?
            .into_iter()
            .filter(|e| spending(&e.stats) && prefixes.iter().any(|p| p.contains(&e.addr)))
            .map(|e| key_of(e.addr))
            .collect())
    }

    /// Makes the XDP program record the image creates it passes to Glance, for the egress
    /// program to count Glance's answers to.
    pub fn set_response_counting(&mut self, on: bool) -> Result<(), LoaderError> {
        set_config_flag(&mut self.ebpf, CONFIG_COUNT_RESPONSES, on)
    }

    /// Each source with image creates → what became of them.
    pub fn create_outcomes(&self) -> Result<HashMap<IpAddr, CreateOutcomes>, LoaderError> {
        read_by_address(&self.ebpf, CREATES_MAP, |c: SourceCreates| CreateOutcomes {
            created: c.created,
            failed: c.failed,
            over_budget: c.over,
        })
    }
}

/// What Glance answered one source's image creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateOutcomes {
    /// Answered with a 2xx status: records created.
    pub created: u64,
    /// Answered with another final status.
    pub failed: u64,
    /// Over the kernel's budget (refused in enforce mode, counted in monitor mode).
    pub over_budget: u64,
}

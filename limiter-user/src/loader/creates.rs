//! The maps behind what the kernel knows of image creates: the budget it holds every source
//! to, whether it records creates for the egress program to count Glance's answers to, and,
//! per source, the creates refused over budget and those Glance answered.

use std::{collections::HashMap, net::IpAddr};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use ipnet::IpNet;
use limiter_common::{
    BudgetConfig, SourceAddr, SourceCreates, BUDGET_CONFIG_MAP, CONFIG_COUNT_RESPONSES,
    CONFIG_IMAGE_CREATE_BUDGET, CREATES_MAP,
};

use super::{
    maps::{map_err, map_mut, read_by_address, set_config_flag},
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

    /// Gives every source within `prefixes` that went over its budget a whole budget again
    /// (an unblocked source is forgiven: its flood before the ban would otherwise keep its
    /// creates refused). The budget's time is in the source's row, which only the program
    /// writes (a write from here would lose the counts it adds meanwhile), so the source is
    /// marked forgiven now and the program starts its budget afresh at its next create over
    /// budget, if that comes before what it spent has run out anyway. Returns how many
    /// sources were marked.
    pub fn forgive_budgets(&mut self, prefixes: &[IpNet]) -> Result<usize, LoaderError> {
        let now = self.jiffies()?;
        let spent: Vec<IpAddr> =
            read_by_address(&self.ebpf, CREATES_MAP, |c: SourceCreates| c.over)?
                .into_iter()
                .filter(|(addr, over)| *over != 0 && prefixes.iter().any(|p| p.contains(addr)))
                .map(|(addr, _)| addr)
                .collect();
        let mut table: BpfHashMap<&mut MapData, SourceAddr, SourceCreates> =
            BpfHashMap::try_from(map_mut(&mut self.ebpf, CREATES_MAP)?)
                .map_err(map_err(CREATES_MAP, "open"))?;
        let mut forgiven = 0;
        for addr in spent {
            let key = SourceAddr::from_octets(crate::net::addr_to_key(addr));
            // Gone since the read (evicted: its budget has long run out) is not an error.
            let Ok(mut entry) = table.get(&key, 0) else {
                continue;
            };
            entry.forgiven_at = now;
            table
                .insert(key, entry, 0)
                .map_err(map_err(CREATES_MAP, "write"))?;
            forgiven += 1;
        }
        Ok(forgiven)
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

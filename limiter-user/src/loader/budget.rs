//! The maps behind image-create budgets: the budget the kernel holds every source to, and
//! what each source spent over it.

use std::{collections::HashMap, net::IpAddr};

use aya::maps::{Array, MapData};
use limiter_common::{
    BudgetConfig, SourceBudget, BUDGETS_MAP, BUDGET_CONFIG_MAP, CONFIG_IMAGE_CREATE_BUDGET,
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

    /// Each source that went over its image-create budget → how many creates did (refused
    /// in enforce mode, counted only in monitor mode).
    pub fn over_budget(&self) -> Result<HashMap<IpAddr, u64>, LoaderError> {
        let mut over = read_by_address(&self.ebpf, BUDGETS_MAP, |b: SourceBudget| b.over)?;
        over.retain(|_, n| *n > 0);
        Ok(over)
    }
}

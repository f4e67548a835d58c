//! The configuration file parser (`Config::from_toml_str`): never panics, and a file that
//! parses prints (`limiter config`) as TOML that parses back to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use limiter_user::config::Config;

fuzz_target!(|text: &str| {
    let Ok(config) = Config::from_toml_str(text) else {
        return;
    };
    let printed = config.to_toml_string();
    match Config::from_toml_str(&printed) {
        Ok(again) => assert_eq!(again, config, "printed as:\n{printed}"),
        Err(e) => {
            panic!("a parsed configuration prints as TOML that does not parse: {e}\n{printed}")
        }
    }
});

//! Address and prefix parsing: the CLI's `parse_prefix` and `collect` (arguments and stdin
//! lines), the configuration lists' `parse_entry`, the rules' `validate_net` and the kernel
//! key mapping. Properties: whatever parses displays as text that parses back to it, in both
//! forms; an accepted prefix is a valid rule and survives the kernel key mapping; the two
//! parsers agree on every entry the configuration accepts without complaint.
#![no_main]

use std::io::Cursor;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use limiter_user::{
    cli::addresses::{collect, entry_of_line, parse_prefix, STDIN},
    net::{key_to_net, net_to_key},
    net_list::{entry_problem, entry_text, parse_entry},
    rules::validate_net,
};

fuzz_target!(|text: &str| {
    cli_prefix(text);
    list_entry(text);
    if let Some(entry) = entry_of_line(text) {
        assert!(!entry.is_empty() && !entry.contains('#'));
        assert_eq!(entry, entry.trim());
    }
    // The whole text as `limiter block` input: words as arguments up to a NUL, the rest on stdin.
    let (arguments, stdin) = text.split_once('\0').unwrap_or((text, ""));
    let mut arguments: Vec<String> = arguments.split(' ').map(str::to_owned).collect();
    arguments.push(STDIN.to_owned());
    if let Ok(prefixes) = collect(&arguments, &mut Cursor::new(stdin.as_bytes())) {
        for prefix in prefixes {
            assert_eq!(prefix, prefix.trunc());
            assert!(validate_net(&prefix).is_ok(), "collect accepted {prefix}");
        }
    }
});

fn cli_prefix(text: &str) {
    let Ok(prefix) = parse_prefix(text) else {
        return;
    };
    assert_eq!(prefix, prefix.trunc(), "{text:?} parsed with host bits");
    assert!(
        validate_net(&prefix).is_ok(),
        "{text:?} parsed as a prefix no rule can have"
    );
    assert_eq!(parse_prefix(&prefix.to_string()), Ok(prefix));
    assert_eq!(parse_prefix(&entry_text(&prefix)), Ok(prefix));
    let (len, key) = net_to_key(prefix);
    assert_eq!(
        key_to_net(len, key),
        Some(prefix),
        "{prefix} through the kernel key"
    );
    assert_eq!(parse_entry(&entry_text(&prefix)), Some(prefix));
}

fn list_entry(text: &str) {
    let Some(entry) = parse_entry(text) else {
        return;
    };
    let written = entry_text(&entry);
    assert_eq!(
        parse_entry(&written),
        Some(entry),
        "{text:?} written as {written:?}"
    );
    if entry_problem(&entry).is_none() {
        // An entry the configuration takes as it is, the CLI takes too (same prefix).
        let expected: Result<IpNet, String> = Ok(entry);
        assert_eq!(
            parse_prefix(&written),
            expected,
            "{text:?} written as {written:?}"
        );
        assert!(validate_net(&entry).is_ok());
    }
}

//! The reference programs the XDP bench measures glance-limiter against do what the bench
//! says they do: `find_header_end`, the floor for a scan that knows where a request's header
//! block ends, stops at a real end wherever it falls in its words, and at nothing else, so its
//! figure is a search that was made, not one cut short.

use limiter_tests::{frames::Packet, require_kernel};
use limiter_user::loader::{Baseline, Verdict};

const GLANCE: u16 = 9292;

fn verdict(program: &Baseline, payload: &[u8]) -> Verdict {
    let frame = Packet::request("198.51.100.2", GLANCE, payload).build();
    program.time_run(&frame, 1).expect("run the program").0
}

#[test]
fn find_header_end_stops_at_a_real_end_at_every_offset_and_at_nothing_else() {
    require_kernel!();
    let program = Baseline::load(Baseline::FIND_HEADER_END).expect("load find_header_end");
    for pad in 0..40 {
        let head = format!(
            "POST /v2/images HTTP/1.1\r\nHost: glance:9292\r\nX-Pad: {}\r\n",
            "p".repeat(pad + 1)
        );
        let lines: String = (0..20)
            .map(|i| format!("X-Header-{i:02}: value\r\n"))
            .collect();
        // A body as an image create has one: the program reads whole 32-byte chunks only.
        let with_end = format!(
            "{head}{lines}X-Forwarded-For: 203.0.113.7\r\n\r\n{}",
            r#"{"name":"x","disk_format":"raw","container_format":"bare"}"#
        );
        assert_eq!(
            verdict(&program, with_end.as_bytes()),
            Verdict::Pass,
            "pad {pad}"
        );
        // Lines down to the shortest a header can be (`a:`), a bare line feed inside a value,
        // and no empty line: no end anywhere.
        let without_end = format!("{head}{lines}a:\r\nb: x\ny\r\nX-Forwarded-For: 203.0.113.7\r\n");
        assert_eq!(
            verdict(&program, without_end.as_bytes()),
            Verdict::Drop,
            "pad {pad}"
        );
    }
}

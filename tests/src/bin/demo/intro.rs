//! What the demo prints before it starts: who is who, what each does, and what to watch.

use crate::{
    daemon::Screen,
    scene::{Cast, FRONTEND_PORT, GLANCE_PORT},
    timeline::{wrap, WIDTH},
    traffic::Plan,
};

/// The cast, what each does, and what to watch for.
pub fn print(screen: Screen, plan: Plan, cast: Cast, threshold: u32) {
    let seconds = plan.duration.as_secs();
    let legit_does = format!(
        "lists images every {} s, creates one every {} s ({:.0} a minute)",
        plan.legit_every.as_secs(),
        plan.legit_every.as_secs() * plan.legit_create_each,
        plan.legit_creates_per_minute(),
    );
    let attacker_does = format!(
        "from {} s on, image creates at {:.0} a second over one keep-alive connection",
        plan.attack_after.as_secs(),
        plan.attack_per_second(),
    );
    let mut cast_lines = vec![(
        "Glance API",
        format!("{}:{GLANCE_PORT}, its images in SQLite", cast.glance),
    )];
    let (watch_screen, watch_lines) = match cast.haproxy {
        None => {
            println!(
                "glance-limiter demo: the real OpenStack Glance API behind the real daemon, in\n\
                 throwaway network namespaces.\n"
            );
            cast_lines.extend([
                ("legit client", format!("{}: {legit_does}", cast.legit)),
                (
                    "attacker",
                    format!("{}, another network: {attacker_does}", cast.attacker),
                ),
                (
                    "limiter run",
                    format!(
                        "on both of the server's links; bans a source at \
                         {threshold} image creates a minute (a demo setting; \
                         the default is 60)"
                    ),
                ),
            ]);
            (
                "Watch the attacker's row: CREATES/MIN climbs, then it turns \"banned\" and the \
                 header counts drops, while the legitimate client stays \"ok\"."
                    .to_owned(),
                String::new(),
            )
        }
        Some(haproxy) => {
            println!(
                "glance-limiter demo behind HAProxy: the real OpenStack Glance API behind the \
                 real\ndaemon, and HAProxy 2.6 in front of both, in throwaway network \
                 namespaces.\n"
            );
            cast_lines.extend([
                (
                    "HAProxy",
                    format!(
                        "TLS frontend {}:{FRONTEND_PORT}, option forwardfor (adds \
                         X-Forwarded-For: <client>); reaches Glance from {}",
                        haproxy.frontend, haproxy.backend
                    ),
                ),
                (
                    "legit client",
                    format!("{}, through HAProxy: {legit_does}", cast.legit),
                ),
                (
                    "attacker",
                    format!(
                        "{}, another network, through HAProxy: {attacker_does}",
                        cast.attacker
                    ),
                ),
                (
                    "limiter run",
                    format!(
                        "on Glance's link, trusted_proxies = [\"{}\"]: each request HAProxy \
                         relays counts for the client it names; bans a source at \
                         {threshold} image creates a minute (a demo setting; the \
                         default is 60)",
                        haproxy.backend
                    ),
                ),
            ]);
            let relayed = "HAProxy relays the limiter's 429 Too Many Requests to it, while the \
                           legitimate client keeps getting 200 and 201 through the same \
                           HAProxy, which is never banned.";
            (
                format!(
                    "Every connection Glance's node sees comes from HAProxy ({}), yet the \
                     attacker's own address ({}) climbs in CREATES/MIN and turns \"banned\"; \
                     {relayed}",
                    haproxy.backend, cast.attacker
                ),
                format!(
                    "Every connection Glance's node sees comes from HAProxy ({}), yet the \
                     limiter counts the attacker's creates for its own address ({}) and bans \
                     it; {relayed} ",
                    haproxy.backend, cast.attacker
                ),
            )
        }
    };
    for (who, what) in cast_lines {
        // A hanging indent under the description column.
        let text = wrap(&what, WIDTH - 16).replace('\n', &format!("\n{:16}", ""));
        println!("  {who:<13} {text}");
    }
    println!();
    let what_next = match screen {
        Screen::Tui => format!(
            "The daemon's live screen takes over this terminal for {seconds} s; press q to \
             quit earlier. {watch_screen} Afterwards a table shows Glance's images table growing during \
             the flood, then only by the legitimate client's creates."
        ),
        Screen::Headless => format!(
            "No screen: one line a second for {seconds} s, then a table. {watch_lines}Ctrl-C \
             stops early; everything is cleaned up either way."
        ),
    };
    println!("{}\n", wrap(&what_next, WIDTH));
    println!(
        "Starting Glance{} and the daemon (a few seconds)...",
        if cast.haproxy.is_some() {
            ", HAProxy"
        } else {
            ""
        }
    );
}

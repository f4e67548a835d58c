//! The actions on the selected source: the form that asks a ban's or an allow's TTL and
//! reason, the request each action becomes, and the question the operator confirms. Requests
//! are the control API's, exactly what `limiter block/unblock/allow/unallow` send.

use ipnet::IpNet;

use super::{
    app::{App, Flash, FormField, Mode, Pending, RuleForm},
    events::describe_rule,
};
use crate::{
    control::protocol::Request,
    operator_input::{parse_ttl, ttl_secs},
    rules::{Action, Scope},
};

/// TTL a ban or an allow starts with in its form.
pub const DEFAULT_TTL: &str = "1h";
/// Longest reason accepted from the keyboard.
pub const MAX_REASON_CHARS: usize = 200;
const MAX_TTL_CHARS: usize = 24;

/// `b` and `a`: opens the form for the selected source.
pub fn begin(app: &mut App, action: Action) {
    let Some(row) = app.selected_row() else {
        return no_selection(app);
    };
    app.mode = Mode::Form(RuleForm {
        action,
        target: IpNet::from(row.address),
        ttl: DEFAULT_TTL.to_string(),
        reason: String::new(),
        field: FormField::Ttl,
        error: None,
    });
}

/// `u` and `A`: asks to remove the rules of `action` that cover the selected source.
pub fn begin_removal(app: &mut App, action: Action) {
    let Some(address) = app.selected_row().map(|r| r.address) else {
        return no_selection(app);
    };
    let covering = app.covering_rules(address, action);
    if covering.is_empty() {
        let text = match action {
            Action::Block => format!("{address} has no block rule in force; nothing to unban"),
            Action::Allow => format!(
                "{address} has no allow rule in force (the configuration's allowlist is changed \
                 in the configuration file)"
            ),
        };
        return flash(app, text, false);
    }
    let prefixes: Vec<IpNet> = covering.iter().map(|r| r.prefix).collect();
    let listed: Vec<String> = covering
        .iter()
        .map(|r| format!("{} ({})", r.prefix, describe_rule(r, app.now)))
        .collect();
    let (verb, request) = match action {
        Action::Block => ("Unban", Request::Unblock { prefixes }),
        Action::Allow => ("Unallow", Request::Unallow { prefixes }),
    };
    app.mode = Mode::Confirm(Pending {
        question: format!("{verb} {}?", listed.join(", ")),
        request,
    });
}

pub fn type_char(form: &mut RuleForm, c: char) {
    let (text, limit) = match form.field {
        FormField::Ttl => (&mut form.ttl, MAX_TTL_CHARS),
        FormField::Reason => (&mut form.reason, MAX_REASON_CHARS),
    };
    if !c.is_control() && text.chars().count() < limit {
        text.push(c);
    }
    form.error = None;
}

pub fn backspace(form: &mut RuleForm) {
    match form.field {
        FormField::Ttl => form.ttl.pop(),
        FormField::Reason => form.reason.pop(),
    };
    form.error = None;
}

pub fn next_field(form: &mut RuleForm) {
    form.field = match form.field {
        FormField::Ttl => FormField::Reason,
        FormField::Reason => FormField::Ttl,
    };
}

/// Checks the form; a valid one becomes a question, a bad TTL stays in the form with why.
pub fn submit(app: &mut App) {
    let Mode::Form(form) = &mut app.mode else {
        return;
    };
    let ttl = if form.ttl.trim().is_empty() {
        None
    } else {
        match parse_ttl(&form.ttl) {
            Ok(ttl) => Some(ttl),
            Err(error) => {
                form.error = Some(error);
                form.field = FormField::Ttl;
                return;
            }
        }
    };
    let reason = match form.reason.trim() {
        "" => format!(
            "manual {} from limiter top by {}",
            match form.action {
                Action::Block => "ban",
                Action::Allow => "allow",
            },
            app.operator
        ),
        typed => typed.to_string(),
    };
    let length = match ttl {
        Some(ttl) => format!("for {}", crate::text::short_duration(ttl)),
        None => "until removed".to_string(),
    };
    let target = form.target;
    let (question, request) = match form.action {
        Action::Block => (
            format!("Ban {target} on the protected ports {length} (reason: {reason})?"),
            Request::Block {
                prefixes: vec![target],
                ttl_secs: ttl.map(ttl_secs),
                reason: Some(reason),
                scope: Scope::ProtectedPorts,
                // Not from the screen: a ban that would cut off a trusted proxy is refused
                // with the daemon's message, and forcing it is a deliberate `limiter block`.
                force: false,
            },
        ),
        Action::Allow => (
            format!("Allow {target} {length}: never banned, exempt from every block (reason: {reason})?"),
            Request::Allow {
                prefixes: vec![target],
                ttl_secs: ttl.map(ttl_secs),
                reason: Some(reason),
            },
        ),
    };
    app.mode = Mode::Confirm(Pending { question, request });
}

/// A short name for a request, for the log: `ban 198.51.100.7/32`.
pub fn describe_request(request: &Request) -> String {
    let (verb, prefixes) = match request {
        Request::Block { prefixes, .. } => ("ban", prefixes),
        Request::Unblock { prefixes } => ("unban", prefixes),
        Request::Allow { prefixes, .. } => ("allow", prefixes),
        Request::Unallow { prefixes } => ("unallow", prefixes),
        Request::List
        | Request::Stats { .. }
        | Request::Status
        | Request::ClusterStatus
        | Request::Recommend { .. } => return "refresh".into(),
    };
    let names: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    format!("{verb} {}", names.join(", "))
}

/// The first prefix a rule request names.
pub fn first_prefix(request: &Request) -> Option<IpNet> {
    match request {
        Request::Block { prefixes, .. }
        | Request::Unblock { prefixes }
        | Request::Allow { prefixes, .. }
        | Request::Unallow { prefixes } => prefixes.first().copied(),
        Request::List
        | Request::Stats { .. }
        | Request::Status
        | Request::ClusterStatus
        | Request::Recommend { .. } => None,
    }
}

fn no_selection(app: &mut App) {
    flash(app, "no source selected".to_string(), false);
}

pub fn flash(app: &mut App, text: String, alarm: bool) {
    app.flash = Some(Flash {
        text,
        alarm,
        at: app.now,
    });
}
